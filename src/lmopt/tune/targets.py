"""Steps the tuner can tune, each adapted to one shape: train with a config and an eval hook,
return the metrics and a way to save the trained model.

To make a new step tunable: write `run(job, config, hook) -> Outcome` below and add it to `TARGETS`.
The hook is `on_eval(step, metrics) -> bool` (True = stop training: the trial was pruned).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmopt.configs import Config
from lmopt.errors import LmoptError
from lmopt.tune.config import TuneJob

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
    config_cls: Callable[[], type[Config]]
    run: Callable[[TuneJob, Config, EvalHook], Outcome]
    collect_garbage: bool = True
    """Run the garbage collector after each trial (frees a model's memory; costly when trials are tiny)."""


def _toy_cls() -> type[Config]:
    from lmopt.tune.toy import ToyConfig

    return ToyConfig


def _toy_run(job: TuneJob, config: Config, hook: EvalHook) -> Outcome:
    from lmopt.tune.toy import save_toy, toy_regression

    model, metrics = toy_regression(config, hook)
    return Outcome(metrics, save=lambda directory, card: save_toy(model, config, directory, card),
                   stopped_by_hook=metrics["steps"] < config.steps)


def _train_cls() -> type[Config]:
    from lmopt.train import TrainConfig

    return TrainConfig


def _train_metrics(result: Any, config: Any) -> dict[str, float]:
    """The run's numeric figures, plus `eval_loss`: the validation loss of the weights returned."""
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float) and v is not None}
    best, final = result.metrics.get("best_eval_loss"), result.metrics.get("final_eval_loss")
    loss = best if config.load_best and best is not None else final
    if loss is not None:
        metrics["eval_loss"] = float(loss)
    return metrics


def _save_loaded(loaded: Any, directory: Path, card_fields: dict[str, Any]) -> None:
    from lmopt.models import ModelCard

    loaded.model.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)
    ModelCard(**{**loaded.card.model_dump(), **card_fields}).write(directory)


def _training_dtype(job: TuneJob) -> str:
    # "auto" picks bf16 weights on CPUs that have it: fine for inference, lossy for AdamW updates.
    return "float32" if job.dtype == "auto" else job.dtype


def _finetune_run(job: TuneJob, config: Config, hook: EvalHook) -> Outcome:
    from lmopt.models import load_model
    from lmopt.train import finetune

    if job.data is None:
        raise LmoptError("tune finetune: the recipe names no training data ('data:')")
    loaded = load_model(job.model, dtype=_training_dtype(job))
    result = finetune(loaded, job.data, config, callbacks=[hook])
    return Outcome(_train_metrics(result, config), loaded=result.model,
                   save=lambda directory, card: _save_loaded(result.model, directory, card),
                   stopped_by_hook=result.stopped == "callback")


TARGETS: dict[str, Target] = {
    "finetune": Target(_train_cls, _finetune_run),
    "toy-regression": Target(_toy_cls, _toy_run, collect_garbage=False),
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise LmoptError(f"step '{name}' cannot be tuned (tunable steps: {', '.join(sorted(TARGETS))})")
    return TARGETS[name]
