"""Steps the tuner can tune, each adapted to one shape: train with a config and an eval hook,
return the metrics and a way to save the trained model.

To make a new step tunable: write `run(job, config, hook) -> Outcome` below and add it to `TARGETS`.
The hook is `on_eval(step, metrics) -> bool` (True = stop training: the trial was pruned).

Each target imports its training code when it runs (`# lazy:` below): every trial process imports
this table, and the training stack (accelerate, transformers models) costs ~2.5 s per process, which
the toy target's second-long trials should not pay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmopt.configs import Config
from lmopt.errors import LmoptError
from lmopt.models import ModelCard, load_model
from lmopt.step import StepContext
from lmopt.train.config import DistillConfig, DistillStepConfig, FinetuneStepConfig, TrainConfig
from lmopt.tune.config import TuneJob
from lmopt.tune.toy import ToyConfig, save_toy, toy_regression

EvalHook = Callable[[int, dict[str, float]], bool]


@dataclass
class Outcome:
    """What one training run gives the tuner."""

    metrics: dict[str, float]
    """Final figures of the run (`eval_loss`, ...); objectives are read from here."""
    save: Callable[[Path, dict[str, Any]], None] | None = None
    """`save(directory, card_fields)` writes the trained model into an existing empty directory."""
    loaded: Any = None
    """The trained model as a `LoadedModel`, for `TASK:METRIC` objectives (None: not supported)."""
    stopped_by_hook: bool = False
    """Training ended early because the hook asked (the trial is then PRUNED, not COMPLETE)."""


@dataclass
class Target:
    config_cls: type[Config]
    run: Callable[[TuneJob, Config, EvalHook], Outcome]
    collect_garbage: bool = True
    """Run the garbage collector after each trial (frees a model's memory; costly when trials are tiny)."""


def _toy_run(job: TuneJob, config: Config, hook: EvalHook) -> Outcome:
    model, metrics = toy_regression(config, hook)
    return Outcome(metrics, save=lambda directory, card: save_toy(model, config, directory, card),
                   stopped_by_hook=metrics["steps"] < config.steps)


def _train_metrics(result: Any, config: Any) -> dict[str, float]:
    """The run's numeric figures, plus `eval_loss`: the validation loss of the weights returned."""
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    best, final = result.metrics.get("best_eval_loss"), result.metrics.get("final_eval_loss")
    loss = best if config.load_best and best is not None else final
    if loss is not None:
        metrics["eval_loss"] = float(loss)
    return metrics


def _save_loaded(loaded: Any, directory: Path, card_fields: dict[str, Any]) -> None:
    loaded.model.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)
    ModelCard(**{**loaded.card.model_dump(), **card_fields}).write(directory)


def _context(job: TuneJob) -> StepContext:
    """The StepContext the tuned step would see in the recipe (paths resolve against the recipe)."""
    base_dir = Path(job.base_dir) if job.base_dir else Path.cwd()
    return StepContext(model=job.model, data=Path(job.data) if job.data else None, output=job.output_dir(),
                       data_dir=Path(job.data_dir) if job.data_dir else None, base_dir=base_dir)


def _seed(seed: int) -> None:
    """Seed torch before the model is touched: peft draws the LoRA init from the global RNG before
    the training loop seeds it, so without this a trial's result depends on the trials before it."""
    torch.manual_seed(seed)


def _outcome(result: Any, config: Any) -> Outcome:
    return Outcome(_train_metrics(result, config), loaded=result.model,
                   save=lambda directory, card: _save_loaded(result.model, directory, card),
                   stopped_by_hook=result.stopped == "callback")


def _finetune_run(job: TuneJob, config: Config, hook: EvalHook) -> Outcome:
    """As the `finetune` step, with the hook and without checkpoints (a trial restarts from scratch)."""
    # lazy: the training stack (module docstring)
    from lmopt.train.finetune import finetune
    from lmopt.train.step import data_paths

    ctx = _context(job)
    data, val = data_paths(ctx, config)
    loaded = load_model(ctx.require_model(), dtype="float32")  # fp32 master weights, as the step does
    train_config = TrainConfig(**config.model_dump(exclude={"data", "val_data", "save_every"}))
    _seed(train_config.seed)
    return _outcome(finetune(loaded, data, train_config, val_data=val, callbacks=[hook]), train_config)


def _distill_run(job: TuneJob, config: Config, hook: EvalHook) -> Outcome:
    """As the `distill` step (the recipe's model is the teacher), with the hook, without checkpoints."""
    # lazy: the training stack (module docstring)
    from lmopt.train.distill import distill
    from lmopt.train.step import cut_student, data_paths

    ctx = _context(job)
    data, val = data_paths(ctx, config)
    teacher = load_model(ctx.require_model(), dtype="float32")
    _seed(config.seed)
    if config.student is not None:
        local = ctx.resolve_path(config.student)
        student = load_model(local if local.exists() else config.student, dtype="float32")
    else:
        student = cut_student(teacher, data, config)
    exclude = {"data", "val_data", "save_every", "student", "student_layers", "layer_selection"}
    train_config = DistillConfig(**config.model_dump(exclude=exclude))
    result = distill(teacher, student, data, train_config, val_data=val, callbacks=[hook])
    return _outcome(result, train_config)


TARGETS: dict[str, Target] = {
    "finetune": Target(FinetuneStepConfig, _finetune_run),
    "distill": Target(DistillStepConfig, _distill_run),
    "toy-regression": Target(ToyConfig, _toy_run, collect_garbage=False),
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise LmoptError(f"step '{name}' cannot be tuned (tunable steps: {', '.join(sorted(TARGETS))})")
    return TARGETS[name]
