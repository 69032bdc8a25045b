"""The Optuna objective: sample a config, train it with a pruning hook, score it, keep the best model.

Lifecycle of one trial:
1. the space draws values; they are written into the tuned step's base config (dotted fields) and the
   result is validated by the step's own config class;
2. the step trains; at each evaluation the hook reports `prune_metric` to `trial.report` and asks
   `trial.should_prune()`; a True answer stops training and the trial ends as PRUNED;
3. the objectives are read from the run's metrics (or evaluated on the trained model for `TASK:METRIC`);
4. if the first objective beats the best model kept so far, the model is saved to `<output>/best`
   (atomically, under a file lock: several workers may finish at once).
"""

from __future__ import annotations

import fcntl
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna

from lmopt.errors import LmoptError
from lmopt.evaluate import run_task
from lmopt.io import atomic_directory
from lmopt.tune.config import TuneJob
from lmopt.tune.space import SearchSpace, apply_params
from lmopt.tune.targets import Outcome, get_target

BEST_DIR = "best"


class PruningHook:
    """`on_eval(step, metrics) -> bool`: report the metric to the trial, True when it should stop."""

    def __init__(self, trial: Any, metric: str, enabled: bool) -> None:
        self.trial, self.metric, self.enabled = trial, metric, enabled
        self.pruned = False
        self.reports: list[tuple[int, float]] = []

    def on_eval(self, step: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.metric)
        if value is None or self.pruned:  # the run's final evaluation repeats after a stop request
            return self.pruned
        self.reports.append((int(step), float(value)))
        if not self.enabled:
            return False
        self.trial.report(float(value), int(step))
        self.pruned = self.trial.should_prune()
        return self.pruned

    __call__ = on_eval


def objective_value(name: str, metrics: dict[str, float], outcome: Outcome, job: TuneJob) -> float:
    """The figure for one objective: a metric of the run, or `TASK:METRIC` evaluated on the model."""
    if name in metrics:
        return float(metrics[name])
    if ":" not in name:
        raise LmoptError(f"objective '{name}': the {job.target} step returned no such metric "
                         f"(it has: {', '.join(sorted(metrics))}; or use TASK:METRIC)")
    if outcome.loaded is None:
        raise LmoptError(f"objective '{name}': the {job.target} step gives no model to evaluate")
    task, metric = name.rsplit(":", 1)
    result = run_task(outcome.loaded, task, limit=job.tune.eval_limit, data_dir=job.data_dir)
    if metric not in result:
        raise LmoptError(f"objective '{name}': task '{task}' has no metric '{metric}' "
                         f"(it has: {', '.join(sorted(result))})")
    return float(result[metric])


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def best_record(output: Path) -> dict[str, Any] | None:
    """The `tune` section of the kept best model's card, or None when none is kept yet."""
    card = output / BEST_DIR / "lmopt.json"
    if not card.exists():
        return None
    return json.loads(card.read_text()).get("tune")


def keep_if_best(output: Path, outcome: Outcome, record: dict[str, Any], direction: str) -> bool:
    """Save the trial's model to `<output>/best` when its value beats the kept one; True if saved."""
    value = record["value"]
    if outcome.save is None or not math.isfinite(value):
        return False
    with file_lock(output / ".best.lock"):
        current = best_record(output)
        if current is not None and not _better(value, current["value"], direction):
            return False
        atomic_directory(output / BEST_DIR, lambda tmp: outcome.save(tmp, {"tune": record}))
    return True


def _better(new: float, old: float, direction: str) -> bool:
    return new < old if direction == "minimize" else new > old


def make_objective(job: TuneJob, worker: int = 0) -> Callable[[Any], float | list[float]]:
    """The function `study.optimize` calls once per trial."""
    space = SearchSpace.from_dict(job.space)
    target = get_target(job.target)
    config_cls = target.config_cls
    directions = job.tune.resolved_directions()
    prune = job.tune.pruner != "none" and not job.tune.multi_objective
    output = job.output_dir()

    def objective(trial: Any) -> float | list[float]:
        params = space.sample(trial)
        config = config_cls.parse(apply_params(job.base, params), where=f"trial {trial.number}")
        trial.set_user_attr("worker", worker)
        hook = PruningHook(trial, job.tune.prune_metric, enabled=prune)
        started = time.time()
        outcome = target.run(job, config, hook)
        metrics = {**outcome.metrics, "trial_seconds": round(time.time() - started, 3)}
        trial.set_user_attr("reports", hook.reports)
        if outcome.stopped_by_hook:
            trial.set_user_attr("metrics", metrics)
            raise optuna.TrialPruned(f"pruned at step {hook.reports[-1][0]}")
        values = [objective_value(name, metrics, outcome, job) for name in job.tune.objectives]
        metrics.update(zip(job.tune.objectives, values, strict=True))
        trial.set_user_attr("metrics", metrics)
        record = {"study": job.study_name(), "trial": trial.number, "objective": job.tune.objectives[0],
                  "value": values[0], "values": values, "params": params, "config": config.to_dict()}
        trial.set_user_attr("saved_best", keep_if_best(output, outcome, record, directions[0]))
        return values if job.tune.multi_objective else values[0]

    return objective
