"""The `optimize` recipe step: search pipelines under constraints; the chosen model goes on down the recipe.

```yaml
steps:
  - optimize:
      objective: wikitext2:perplexity
      constraints: ["decode_speedup>=2", "ppl_ratio<=1.2"]
      budget_min: 60
      output: optimize-run          # next to the recipe; rerunning the recipe resumes the search
```
"""

from __future__ import annotations

import shutil
from typing import Any

from lmopt.io import atomic_directory
from lmopt.select.optimize import optimize
from lmopt.select.optimize_config import OptimizeConfig
from lmopt.step import Step, StepContext, StepResult


def optimize_step(ctx: StepContext, config: OptimizeConfig) -> StepResult:
    """Search pipelines under constraints; the chosen model becomes the recipe's current model.

    `models` defaults to the recipe's current model; the search lives in `output` (default
    `$LMOPT_HOME/optimize/<key>`), outside the step cache, so rerunning an interrupted recipe resumes it."""
    fields: dict[str, Any] = {"models": config.models or [str(ctx.require_model())]}
    if config.output:
        fields["output"] = str(ctx.resolve_path(config.output))
    if config.data_dir is None and ctx.data_dir is not None:
        fields["data_dir"] = str(ctx.data_dir)
    result = optimize(config.model_copy(update=fields), base_dir=ctx.base_dir, log=ctx.log)
    best = result.best
    metrics = {"output": str(result.output), "best_trial": best["number"] if best else None,
               "pipeline": best["label"] if best else None, "feasible": bool(best and best["feasible"]),
               "figures": best["full"] if best else None, "front": [r["number"] for r in result.front],
               "counts": result.counts}
    if result.best_model is None:
        return StepResult(metrics=metrics)
    source = result.best_model
    atomic_directory(ctx.output, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))
    return StepResult(model=ctx.output, metrics=metrics)


OPTIMIZE = Step("optimize", OptimizeConfig, optimize_step)
