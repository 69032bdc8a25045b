"""Typed configs of a tuning run: `TuneConfig` (budgets, sampler, pruner, storage, objectives) and
`TuneJob` (everything a worker process needs to run trials: model, data, the tuned step, its base
config, the space). A job is plain JSON so `--workers K` can hand it to K fresh processes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from lmopt.configs import Config
from lmopt.settings import lmopt_home

# Metrics where larger is better; every other objective is minimized unless `directions` says otherwise.
MAXIMIZED = ("acc", "accuracy", "f1", "exact_match", "em", "score")


class TuneConfig(Config):
    """How to search: budgets, sampler, pruner, where the study lives, what to optimize."""

    n_trials: int = Field(default=20, ge=1)
    """Trials in the study in total. Trials finished by earlier (interrupted) runs count, so a
    resumed study runs only the rest; raise it to extend a finished study."""
    timeout: float | None = Field(default=None, gt=0)
    """Wall-clock seconds for this run (per worker); the trial running at the deadline finishes."""
    workers: int = Field(default=1, ge=1)
    """Local worker processes sharing the study (CPU threads are split between them)."""
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["none", "median", "hyperband"] = "median"
    """Stops bad trials early from the validation losses they report while training."""
    startup_trials: int = Field(default=4, ge=0)
    """Random trials before TPE models the space; also the finished trials the median pruner waits for."""
    warmup_steps: int = Field(default=0, ge=0)
    """Median pruner: training steps every trial runs before it may be pruned."""
    min_resource: int | Literal["auto"] = "auto"
    """Hyperband: training steps of the first rung ('auto' = estimated from the first finished trial)."""
    reduction_factor: int = Field(default=3, ge=2)
    """Hyperband: 1/reduction_factor of the trials go on at each rung."""
    storage: str | None = None
    """Optuna storage URL. Default `sqlite:///<output>/study.db`; `postgresql://user:pw@host/db` lets
    workers on several machines join one study."""
    study_name: str | None = None
    """Default: derived from the job's content, so rerunning the same command resumes the same study."""
    output: str | None = None
    """Directory for the best model, trials table, plots and report (default `$LMOPT_HOME/tune/<study>`)."""
    seed: int | None = 0
    """Sampler seed (each worker and each resumed run offsets it, so they never repeat each other)."""
    objectives: list[str] = Field(default_factory=lambda: ["eval_loss"], min_length=1)
    """Metrics to optimize: a metric the tuned step returns (`eval_loss`, ...), `trial_seconds`
    (wall-clock cost of the trial), or `TASK:METRIC` evaluated on the trained model (`pydoc:perplexity`,
    `arc_easy:acc`). Two or more = multi-objective: the Pareto set is reported."""
    directions: list[Literal["minimize", "maximize"]] | None = None
    """One per objective; default: maximize accuracy-like metrics, minimize the rest."""
    prune_metric: str = "eval_loss"
    """The intermediate metric reported to the pruner at every evaluation during training."""
    eval_limit: int | None = Field(default=8, ge=1)
    """Windows/items for `TASK:METRIC` objectives."""
    enqueue_base: bool = False
    """Run the base config's own values (where inside the space) as the first trial."""
    heartbeat_s: int = Field(default=30, ge=1)
    """A trial whose worker sent no heartbeat for 4x this long is failed and re-queued once."""
    plots: bool = True
    """Save optimization-history and parameter-importance PNGs."""

    @model_validator(mode="after")
    def _directions(self) -> TuneConfig:
        if self.directions is not None and len(self.directions) != len(self.objectives):
            raise ValueError(f"{len(self.directions)} directions for {len(self.objectives)} objectives")
        return self

    def resolved_directions(self) -> list[str]:
        if self.directions is not None:
            return list(self.directions)
        return ["maximize" if obj.rsplit(":", 1)[-1].lower() in MAXIMIZED else "minimize"
                for obj in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


class TuneJob(Config):
    """A tuning job: the step being tuned, its inputs and base config, the space, and the TuneConfig."""

    target: str
    """The tuned step: `finetune`, `distill`, or `toy-regression` (a seconds-long stand-in for tests)."""
    base: dict[str, Any] = Field(default_factory=dict)
    """The tuned step's config; the space overrides some of its fields in each trial."""
    space: dict[str, Any]
    """The SearchSpace, as a dict."""
    tune: TuneConfig = Field(default_factory=TuneConfig)
    model: str | None = None
    data: str | None = None
    data_dir: str | None = None
    base_dir: str | None = None
    """The recipe's folder: relative paths in the tuned step's config resolve against it."""
    dtype: str = "auto"

    def key(self) -> str:
        """Hash of what defines the study (not budgets, workers or where it is stored)."""
        volatile = {"n_trials", "timeout", "workers", "storage", "study_name", "output", "plots",
                    "heartbeat_s"}
        tune = {k: v for k, v in self.tune.to_dict().items() if k not in volatile}
        blob = {"target": self.target, "base": self.base, "space": self.space, "model": self.model,
                "data": self.data, "tune": tune}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]

    def study_name(self) -> str:
        return self.tune.study_name or f"{self.target}-{self.key()}"

    def output_dir(self) -> Path:
        if self.tune.output:
            return Path(self.tune.output).expanduser().resolve()
        return lmopt_home() / "tune" / self.study_name()

    def storage_url(self) -> str:
        return self.tune.storage or f"sqlite:///{self.output_dir() / 'study.db'}"
