"""The Optuna side of `lmopt optimize`: the study in SQLite under the output dir, one run at a time, resume.

- Storage: `sqlite:///<output>/study.db`; the study remembers the key of the config that made it
  (models, objective, constraints, space, fidelities), so rerunning with other settings on the same
  output is an error instead of a mixed study.
- One run per output dir (a file lock), so a trial still RUNNING when a run starts belongs to a run
  that died (killed, power cut). It is marked FAIL and its parameters queued again, as is a trial
  ended by Ctrl-C; a trial that failed on its own (its pipeline or measurement raised) has an `error`
  and is not retried. So a killed search loses at most the trial it was in.
- Sampler: multi-objective TPE with the constraints as Optuna constraints (each trial's violations,
  <= 0 = met: `Trial.set_constraint` from Optuna 5, `constraints_func` before); its seed is offset
  by the trials already in the study, so a resumed run does not replay the same draws.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lmopt.errors import LmoptError
from lmopt.select.optimize_config import OptimizeConfig

STUDY_NAME = "optimize"
VOLATILE = {"budget_min", "n_trials", "output", "isolate", "keep_artifacts", "data_dir"}
"""Fields that may change between runs of one search (how long, where, how measured)."""


def study_key(config: OptimizeConfig) -> str:
    """Hash of what defines the search; the default output dir is named by it."""
    fields = {k: v for k, v in config.to_dict().items() if k not in VOLATILE}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold `<out>/.lock` for the run; a second run on the same output fails at once."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LmoptError(f"{out}: another lmopt optimize run is using this output dir") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


SET_CONSTRAINT = hasattr(optuna.trial.Trial, "set_constraint")
"""Optuna 5 takes constraints per trial; Optuna 4 only through the sampler's constraints_func."""


def trial_constraints(trial: Any) -> list[float]:
    """Optuna 4's constraints_func: the violations the trial stored (<= 0 = met)."""
    return list(trial.user_attrs.get("constraints", []))


def set_constraints(trial: Any, constraints: list[Any], missed: list[float]) -> None:
    """Hand a trial's constraint violations to the sampler."""
    trial.set_user_attr("constraints", missed)
    if SET_CONSTRAINT:
        for constraint, value in zip(constraints, missed, strict=True):
            trial.set_constraint(str(constraint), value)


def open_study(out: Path, config: OptimizeConfig) -> Any:
    """Create the study in `<out>/study.db` or load the one there (same config key required)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}",
                                         engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, load_if_exists=True,
                                directions=config.directions())
    key = study_key(config)
    found = study.user_attrs.get("key")
    if found is not None and found != key:
        raise LmoptError(f"{out}: holds a search with other settings (models, objective, constraints, space "
                         "or fidelities); use another --output, or the settings it was started with")
    if found is None:
        study.set_user_attr("key", key)
        study.set_user_attr("config", config.to_dict())
    old_api = config.constraints and not SET_CONSTRAINT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            seed=config.seed + len(study.get_trials(deepcopy=False)), n_startup_trials=config.startup_trials,
            multivariate=True, group=True, constraints_func=trial_constraints if old_api else None)
    return study


def recover_interrupted(study: Any) -> list[int]:
    """Fail trials left RUNNING by a dead run; queue every interrupted trial's parameters again, once.
    Returns the numbers of the trials queued again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for trial in trials:
        if trial.state == TrialState.FAIL and "error" not in trial.user_attrs and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            queued.append(trial.number)
    return queued


def counted_trials(study: Any) -> int:
    """Trials that count against `n_trials`: finished ones (not repeats of another) and ones that failed
    on their own."""
    def counts(t: Any) -> bool:
        if t.state == TrialState.FAIL:
            return "error" in t.user_attrs
        return t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs

    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t))


def trial_record(trial: Any) -> dict[str, Any]:
    """A trial as the outputs see it (figures stored by the search in its user attributes)."""
    attrs = trial.user_attrs
    error = attrs.get("error")
    if trial.state == TrialState.FAIL and error is None:
        error = "interrupted (its parameters are run again)"
    if "duplicate_of" in attrs:
        error = f"same pipeline as trial {attrs['duplicate_of']} (not run again)"
    return {"number": trial.number, "state": trial.state.name.lower(), "label": attrs.get("label", "-"),
            "candidate": attrs.get("candidate"), "params": dict(trial.params), "steps": attrs.get("steps", []),
            "estimate": attrs.get("estimate"), "estimate_violations": attrs.get("estimate_violations"),
            "full": attrs.get("full"), "violations": attrs.get("violations"), "model": attrs.get("model"),
            "cheap_model": attrs.get("cheap_model"), "seconds": attrs.get("seconds"), "error": error,
            "retry_of": attrs.get("retry_of"), "duplicate_of": attrs.get("duplicate_of"),
            "feasible": bool(attrs.get("full")) and all(v <= 0 for v in attrs.get("violations") or [])}
