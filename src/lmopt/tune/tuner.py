"""`tune(recipe, space, config)`: search the config of a recipe's training step.

The recipe names the model, the data and a tunable step (`finetune`, `distill`) whose config is the
base the space overrides. Steps before it run once (cached, like `lmopt run`); the tuned step runs once
per trial; steps after it are not run (run them from a recipe on the best model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.hardware import apply_threads
from lmopt.pipeline import Recipe, run_recipe
from lmopt.progress import progress_bar
from lmopt.step import NullRecorder, RunRecorder, get_step
from lmopt.tune.config import TuneConfig, TuneJob
from lmopt.tune.results import TuneResult, summarize, write_outputs
from lmopt.tune.space import SearchSpace
from lmopt.tune.study import open_study, run_worker, run_workers, used_trials
from lmopt.tune.targets import TARGETS, get_target


def validate_job(job: TuneJob) -> None:
    """Fail before any trial when the base config or a value of the space does not fit the step."""
    config_cls = get_target(job.target).config_cls
    config_cls.parse(job.base, where=f"{job.target} config")
    SearchSpace.from_dict(job.space).check(config_cls, job.base)


def run_job(job: TuneJob, log: Callable[[str], Any] = print) -> TuneResult:
    """Run (or resume) the study of `job` with its workers, then write the outputs and return them."""
    validate_job(job)
    out = job.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(job)
    done = used_trials(study)
    log(f"study {job.study_name()} in {job.storage_url()}: {done} of {job.tune.n_trials} trials done")
    try:
        with progress_bar(f"tune {job.target}", job.tune.n_trials) as advance:
            advance(min(done, job.tune.n_trials))
            seen = [done]

            def poll(*_: Any) -> None:
                now = min(used_trials(study), job.tune.n_trials)
                advance(max(0, now - seen[0]))
                seen[0] = max(seen[0], now)

            if job.tune.workers == 1:
                apply_threads()
                run_worker(job, 0, on_trial=poll)
            else:
                run_workers(job, progress=poll)
    finally:  # interrupted or not: every finished trial and the best model so far are written out
        result = write_outputs(summarize(study, job), study, job)
    log(f"best trial {result.best_trial}: {result.best_values} -> {out}")
    return result


def _find_target(recipe: Any, path: str) -> tuple[int, str, dict[str, Any]]:
    for i, item in enumerate(recipe.steps):
        if not isinstance(item, dict) or len(item) != 1:
            raise LmoptError(f"{path}: steps.{i}: each step is a one-key map {{step-name: {{config}}}}")
        (name, config), = item.items()
        if name in TARGETS:
            return i, name, dict(config or {})
    raise LmoptError(f"{path}: no tunable step in the recipe (add one of: {', '.join(sorted(TARGETS))})")


def _inputs(recipe: Any, base_dir: Path, upto: int, registry: Any, log: Callable) -> tuple[Any, Any]:
    """The model and data the tuned step sees: the recipe's, or the output of the steps before it."""
    if upto == 0:
        model = recipe.model
        if model is not None and (base_dir / model).exists():
            model = str((base_dir / model).resolve())
        return model, str(base_dir / recipe.data) if recipe.data else None
    prefix = recipe.model_copy(update={"steps": recipe.steps[:upto], "evaluate": None, "output": None})
    summary = run_recipe(prefix, base_dir, registry=registry, log=log)
    data = next((s["data"] for s in reversed(summary["steps"]) if s["data"]), None)
    if data is None and recipe.data:
        data = str(base_dir / recipe.data)
    return summary["output"], data


def job_from_recipe(recipe: Any, space: SearchSpace, config: TuneConfig, base_dir: Path | None = None,
                    registry: RunRecorder | None = None, log: Callable = print, where: str = "recipe") -> TuneJob:
    """Build the tuning job of a recipe (running the steps before the tuned one)."""
    base_dir = base_dir or Path.cwd()
    index, name, base = _find_target(recipe, where)
    for i, item in enumerate(recipe.steps[:index]):
        (step, cfg), = item.items()
        get_step(step).parse(cfg, where=f"{where}: steps.{i}.{step}")
    if index < len(recipe.steps) - 1:
        log(f"note: the {len(recipe.steps) - index - 1} step(s) after '{name}' are not run by tune")
    model, data = _inputs(recipe, base_dir, index, registry, log)
    data_dir = str(base_dir / recipe.data_dir) if recipe.data_dir else None
    return TuneJob(target=name, base=base, space=space.to_dict(), tune=config, model=model, data=data,
                   data_dir=data_dir, base_dir=str(base_dir.resolve()), dtype=recipe.dtype)


def tune(recipe: Any, space: SearchSpace | str | Path | dict[str, Any], config: TuneConfig | None = None,
         *, registry: RunRecorder | None = None, log: Callable[[str], Any] = print) -> TuneResult:
    """Tune the training step of `recipe` (a Recipe or a YAML path) over `space` (or its YAML path)."""
    where, base_dir = "recipe", Path.cwd()
    if isinstance(recipe, str | Path):
        where, base_dir = str(recipe), Path(recipe).resolve().parent
        if not Path(recipe).exists():
            raise LmoptError(f"{recipe}: recipe file not found")
        recipe = Recipe.from_yaml(recipe)
    if isinstance(space, str | Path):
        space = SearchSpace.from_yaml(space)
    elif isinstance(space, dict):
        space = SearchSpace.from_dict(space)
    job = job_from_recipe(recipe, space, config or TuneConfig(), base_dir, registry, log, where)
    result = run_job(job, log)
    (registry or NullRecorder()).record("tune", job.model, {"best_values": result.best_values, "counts": result.counts},
                        task=job.target, config={"best_params": result.best_params, **job.tune.to_dict()})
    return result
