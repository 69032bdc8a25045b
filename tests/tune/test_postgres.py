"""Studies on a real PostgreSQL server: two worker processes share one study, a killed worker's trial is
replayed once on resume. Skips with the reason when no server can be had (see `postgres_server`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest

from lmopt.errors import LmoptError
from lmopt.tune import TuneConfig, TuneJob, run_job
from postgres_server import pg_server, pg_url  # noqa: F401  (fixtures)

SPACE = {"optim.lr": {"type": "log-float", "low": 1e-3, "high": 0.3}, "hidden": [4, 8, 16]}
DONE = optuna.trial.TrialState.COMPLETE


def pg_job(url, tmp_path, **tune):
    # 0.3 s per evaluation, 4 evaluations: a trial lasts over a second, so the two processes overlap
    tune = {"n_trials": 6, "workers": 2, "pruner": "none", "storage": url, "output": str(tmp_path / "out"),
            "study_name": "pg", "plots": False, **tune}
    return TuneJob(target="toy-regression", base={"steps": 40, "eval_every": 10, "delay": 0.3}, space=SPACE,
                   tune=TuneConfig(**tune))


def test_two_workers_share_one_postgres_study(pg_url, tmp_path):  # noqa: F811
    result = run_job(pg_job(pg_url, tmp_path), log=lambda m: None)
    study = optuna.load_study(study_name="pg", storage=pg_url)  # a fresh connection sees both workers
    numbers = [t.number for t in study.trials]
    assert 6 <= len(numbers) <= 7  # workers finishing together may overshoot by workers - 1
    assert numbers == list(range(len(numbers)))
    assert all(t.state == DONE for t in study.trials)
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1}
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == len(numbers)
    assert result.best_trial == min(study.trials, key=lambda t: t.value).number


def _running_trial_of(storage, worker, deadline):
    while time.time() < deadline:
        try:
            study = optuna.load_study(study_name="pg", storage=storage)
        except KeyError:  # the workers have not created the study yet
            time.sleep(0.1)
            continue
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("worker") == worker:
                return t.number
        time.sleep(0.1)
    raise AssertionError(f"worker {worker} never started a trial")


def test_a_killed_workers_trial_is_replayed_once_on_resume(pg_url, tmp_path):  # noqa: F811
    job = pg_job(pg_url, tmp_path, n_trials=5, heartbeat_s=1)
    (tmp_path / "out").mkdir()
    job_file = tmp_path / "out" / "job.json"
    job_file.write_text(job.model_dump_json())
    workers = [subprocess.Popen([sys.executable, "-m", "lmopt.tune.worker", str(job_file), str(i)])
               for i in range(2)]
    try:
        killed = _running_trial_of(pg_url, 1, time.time() + 120)
        workers[1].send_signal(signal.SIGKILL)  # no chance to fail its trial: only its heartbeat stops
        killed_at = time.time()
        assert workers[0].wait(timeout=300) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    time.sleep(max(0.0, killed_at + 4 * 1 + 1.5 - time.time()))  # past the grace period (4 x heartbeat)
    result = run_job(job, log=lambda m: None)  # resume: `lmopt tune` again with the same job
    study = optuna.load_study(study_name="pg", storage=pg_url)
    trials = study.trials
    assert [t.number for t in trials] == list(range(len(trials)))
    assert study.trials[killed].state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].params == trials[killed].params and retries[0].state == DONE
    assert sum(t.state == DONE for t in trials) in (5, 6)  # the budget, + at most workers - 1 overshoot
    assert not [t for t in trials if t.state not in (DONE, optuna.trial.TrialState.FAIL)]
    # every sampled point ran to completion once: the only repeat is the replay of the killed trial
    completed = [tuple(sorted(t.params.items())) for t in trials if t.state == DONE]
    assert len(set(completed)) == len(completed)
    assert result.counts == {"complete": sum(t.state == DONE for t in trials), "fail": 1}


def test_unreachable_storage_is_one_line_naming_what_to_start(tmp_path):
    job = pg_job("postgresql://me:secret@127.0.0.1:1/lmopt", tmp_path, workers=1)
    with pytest.raises(LmoptError) as err:
        run_job(job, log=lambda m: None)
    message = str(err.value)
    assert "\n" not in message and "secret" not in message
    assert "cannot connect" in message and "start the database server" in message
