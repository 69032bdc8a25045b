"""The `tune` recipe step: search a training step's config, continue the recipe with the best model.

```yaml
steps:
  - tune:
      step: finetune                  # the step to tune
      base: {method: lora, max_steps: 40, eval_every: 10}
      space: tune-lora-space.yaml     # next to the recipe (or an inline map)
      n_trials: 12
      pruner: median
```

The study lives in `output` (default `$LMOPT_HOME/tune/<study>`), outside the step's cache directory,
so re-running an interrupted recipe resumes the study instead of starting over.
"""

from __future__ import annotations

import shutil
from typing import Any

from pydantic import Field

from lmopt.io import atomic_directory
from lmopt.step import Step, StepContext, StepResult
from lmopt.tune.config import TuneConfig, TuneJob
from lmopt.tune.space import SearchSpace
from lmopt.tune.tuner import run_job


class TuneStepConfig(TuneConfig):
    """A TuneConfig plus what to tune."""

    step: str = "finetune"
    """The tuned step (`finetune`, `distill`, `toy-regression`)."""
    base: dict[str, Any] = Field(default_factory=dict)
    """The tuned step's config; the space overrides some of its fields in each trial."""
    space: str | dict[str, Any]
    """The search space: a YAML file (relative to the recipe) or an inline map."""


def job_from_step(ctx: StepContext, config: TuneStepConfig) -> TuneJob:
    if isinstance(config.space, str):
        space = SearchSpace.from_yaml(ctx.resolve_path(config.space))
    else:
        space = SearchSpace.from_dict(config.space, where="tune.space")
    fields = config.to_dict()
    tune = TuneConfig(**{k: v for k, v in fields.items() if k in TuneConfig.model_fields})
    if tune.output:
        tune.output = str(ctx.resolve_path(tune.output))
    return TuneJob(target=config.step, base=config.base, space=space.to_dict(), tune=tune,
                   model=str(ctx.model) if ctx.model is not None else None,
                   data=str(ctx.data) if ctx.data is not None else None,
                   data_dir=str(ctx.data_dir) if ctx.data_dir else None, base_dir=str(ctx.base_dir.resolve()),
                   dtype=ctx.dtype)


def tune_step(ctx: StepContext, config: TuneStepConfig) -> StepResult:
    """Tune a training step's hyperparameters; the best model becomes the recipe's current model."""
    job = job_from_step(ctx, config)
    result = run_job(job, log=ctx.log)
    metrics = {"study": result.study_name, "output": str(result.output), "best_trial": result.best_trial,
               "best_values": result.best_values, "best_params": result.best_params,
               "counts": result.counts, "pareto": result.pareto}
    if result.best_model is None:
        return StepResult(metrics=metrics)
    atomic_directory(ctx.output, lambda tmp: shutil.copytree(result.best_model, tmp, dirs_exist_ok=True))
    return StepResult(model=ctx.output, metrics=metrics)


TUNE = Step("tune", TuneStepConfig, tune_step)
