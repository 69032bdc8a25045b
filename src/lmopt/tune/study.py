"""The study: Optuna RDB storage shared by every worker, sampler and pruner, budgets, resume.

- Storage: any SQLAlchemy URL Optuna accepts (SQLite file by default; PostgreSQL for workers on many
  machines). Trial numbers are assigned inside the database, so workers never collide.
- Budget: `n_trials` counts every started trial of the study (finished, pruned or running) except
  failed ones that were re-queued, so a resumed study runs only what is left. Workers that finish at
  the same moment may overshoot it by at most `workers - 1` trials.
- Resume: a trial interrupted by Ctrl-C ends FAIL; one whose process died stops sending heartbeats
  and is failed after 4 x `heartbeat_s`. Either way its parameters are queued again, once.
- Seeds: the sampler seed is offset by the worker index and by the trials already in the study, so
  two workers (or a resumed run) never replay the same random draws.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lmopt.database import check_database, masked
from lmopt.errors import LmoptError
from lmopt.tune.config import TuneConfig, TuneJob
from lmopt.tune.objective import make_objective
from lmopt.tune.space import SearchSpace
from lmopt.tune.targets import get_target


def _sampler(cfg: TuneConfig, offset: int) -> Any:
    seed = None if cfg.seed is None else cfg.seed + offset
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.startup_trials,
                                      multivariate=True, constant_liar=cfg.workers > 1)


def _pruner(cfg: TuneConfig) -> Any:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials,
                                           n_warmup_steps=cfg.warmup_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_resource,
                                              reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


def _storage(job: TuneJob) -> Any:
    url = check_database(job.storage_url(), "tune storage")  # one line for a missing driver or server
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 120}}  # several local workers take turns on the file lock
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                              heartbeat_interval=job.tune.heartbeat_s,
                                              grace_period=4 * job.tune.heartbeat_s,
                                              heartbeat_stale_trial_callback=requeue)
        except Exception as exc:  # bad URL, missing driver, unreachable server
            raise LmoptError(f"storage '{masked(url)}': {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def open_study(job: TuneJob, worker: int = 0) -> Any:
    """Create the study or join the existing one of the same name in the job's storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(job)
    try:
        study = optuna.create_study(storage=storage, study_name=job.study_name(), load_if_exists=True,
                                    directions=job.tune.resolved_directions(), pruner=_pruner(job.tune))
    except ValueError as exc:  # e.g. the existing study has other directions
        raise LmoptError(f"study '{job.study_name()}': {exc}") from None
    study.sampler = _sampler(job.tune, offset=1000 * worker + len(study.get_trials(deepcopy=False)))
    if "job" not in study.user_attrs:
        study.set_user_attr("job", job.to_dict())
    return study


def requeue(study: Any, trial: Any) -> None:
    """Queue a failed trial's parameters again, once (not a retry of a retry, not twice)."""
    if "retry_of" in trial.user_attrs:
        return
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def used_trials(study: Any) -> int:
    """Trials that count against the budget: started ones, less the failed ones that were queued again."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return sum(1 for t in trials if t.state != TrialState.WAITING
               and not (t.state == TrialState.FAIL and t.number in retried))


def run_worker(job: TuneJob, worker: int = 0, on_trial: Any = None) -> None:
    """Run trials of the study in this process until the budget or the timeout is used up."""
    study = open_study(job, worker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        requeue(study, trial)
    if job.tune.enqueue_base and not study.get_trials(deepcopy=False):
        study.enqueue_trial(SearchSpace.from_dict(job.space).values_in(job.base), user_attrs={"base": True})

    def budget(study: Any, trial: Any) -> None:
        if on_trial is not None:
            on_trial(trial)
        if used_trials(study) >= job.tune.n_trials:
            study.stop()

    if used_trials(study) >= job.tune.n_trials:
        return
    study.optimize(make_objective(job, worker), timeout=job.tune.timeout, callbacks=[budget],
                   gc_after_trial=get_target(job.target).collect_garbage)


def run_workers(job: TuneJob, progress: Any = None) -> None:
    """Spawn `job.tune.workers` processes on this machine, all working on the same study."""
    job_file = job.output_dir() / "job.json"
    job_file.write_text(json.dumps(job.to_dict(), indent=2))
    procs = [subprocess.Popen([sys.executable, "-m", "lmopt.tune.worker", str(job_file), str(i)])
             for i in range(job.tune.workers)]
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            if progress is not None:
                progress()
    except KeyboardInterrupt:
        deadline = time.time() + 5  # a terminal's Ctrl-C reached them too: give them time to stop
        while time.time() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.2)
        for p in procs:  # a signal sent to this process alone did not reach them
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(timeout=120)  # each fails its running trial (re-queued on resume) and exits
        raise
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        index, status = failed[0]
        raise LmoptError(f"tune: worker {index} exited with status {status} (its output is above)")
