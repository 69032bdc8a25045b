"""Two local worker processes share one SQLite study: both finish trials, numbers never collide."""

import json

import optuna

from lmopt.tune import TuneConfig, TuneJob, run_job
from lmopt.tune.study import open_study


def test_two_workers_share_one_sqlite_study(tmp_path):
    space = {"optim.lr": {"type": "log-float", "low": 1e-3, "high": 0.3}, "hidden": [4, 8, 16]}
    # 0.4 s per evaluation, 4 evaluations: a trial lasts ~2 s, so the two processes overlap
    job = TuneJob(target="toy-regression", base={"steps": 40, "eval_every": 10, "delay": 0.4}, space=space,
                  tune=TuneConfig(n_trials=6, workers=2, pruner="none", output=str(tmp_path / "out"),
                                  study_name="shared", plots=False))
    result = run_job(job, log=lambda m: None)
    # a fresh connection to the storage sees every finished trial of both workers
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    numbers = [t.number for t in study.trials]
    assert 6 <= len(numbers) <= 7  # workers finishing together may overshoot by workers - 1
    assert numbers == list(range(len(numbers)))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1}
    # the two workers sampled different points (seeds offset per worker)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == len(numbers)
    best = min(study.trials, key=lambda t: t.value)
    kept = json.loads((tmp_path / "out" / "best" / "lmopt.json").read_text())["tune"]
    assert kept["trial"] == best.number == result.best_trial
    assert json.loads((tmp_path / "out" / "job.json").read_text())["tune"]["workers"] == 2
    assert len(open_study(job).trials) == len(numbers)
