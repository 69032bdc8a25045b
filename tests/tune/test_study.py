"""Studies on the toy step: budgets, pruning, the kept best model, resume after an interrupt, Pareto sets."""

import json

import optuna
import pytest

from lmopt.errors import LmoptError
from lmopt.tune import TuneConfig, TuneJob, run_job
from lmopt.tune import targets as targets_mod
from lmopt.tune.study import open_study

SPACE = {"optim.lr": {"type": "log-float", "low": 1e-4, "high": 1.0}, "hidden": [4, 8, 16, 32]}


def toy_job(tmp_path, **tune):
    tune = {"n_trials": 8, "output": str(tmp_path / "out"), "startup_trials": 3, "plots": False,
            "study_name": "toy", **tune}
    return TuneJob(target="toy-regression", base={"steps": 40}, space=SPACE, tune=TuneConfig(**tune))


def complete(study):
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_study_keeps_the_best_model_and_writes_outputs(tmp_path):
    import torch

    from lmopt.tune.toy import ToyConfig, _data

    result = run_job(toy_job(tmp_path, pruner="none", plots=True), log=lambda m: None)
    out = tmp_path / "out"
    study = open_study(toy_job(tmp_path))
    assert len(study.trials) == 8 and result.counts == {"complete": 8}
    best = min(complete(study), key=lambda t: t.value)
    assert result.best_trial == best.number and result.best_values == [best.value]
    assert result.best_config == {"steps": 40, "optim": {"lr": best.params["optim.lr"]},
                                  "hidden": best.params["hidden"]}
    # the kept model really is that trial's model: reload it and recompute its validation loss
    card = json.loads((out / "best" / "lmopt.json").read_text())["tune"]
    assert card["trial"] == best.number and card["value"] == best.value
    config = ToyConfig.parse(json.loads((out / "best" / "config.json").read_text()))
    model = torch.nn.Sequential(torch.nn.Linear(1, config.hidden), torch.nn.Tanh(),
                                torch.nn.Linear(config.hidden, 1))
    model.load_state_dict(torch.load(out / "best" / "toy.pt"))
    _, _, vx, vy = _data(config.seed)
    with torch.no_grad():
        assert float(torch.nn.functional.mse_loss(model(vx), vy)) == pytest.approx(best.value, rel=1e-5)
    for name in ("history.png", "importances.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "trials.csv").read_text().splitlines()) == 9
    report = (out / "report.md").read_text()
    assert f"## Best: trial {best.number}" in report and "![importances](importances.png)" in report
    assert json.loads((out / "best.json").read_text())["best_params"] == best.params


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruners_stop_bad_trials_early(tmp_path, pruner):
    result = run_job(toy_job(tmp_path, n_trials=12, pruner=pruner, min_resource=10), log=lambda m: None)
    pruned = [r for r in result.trials if r["state"] == "pruned"]
    assert pruned and result.counts.get("complete", 0) >= 1
    for row in pruned:  # stopped before the end, at the step of its last report
        assert row["last_step"] < 40
    # a pruned trial is never the kept model
    kept = json.loads((tmp_path / "out" / "best" / "lmopt.json").read_text())["tune"]["trial"]
    assert kept not in {r["number"] for r in pruned}


def test_resume_extends_the_study_and_replays_the_interrupted_trial(tmp_path, monkeypatch):
    run_job(toy_job(tmp_path, n_trials=3, pruner="none"), log=lambda m: None)
    first = {t.number: t.value for t in open_study(toy_job(tmp_path)).trials}
    original = targets_mod.TARGETS["toy-regression"]

    def interrupt_on_trial_4(job, config, hook):
        if len(open_study(job).trials) == 5:  # trial 4 is running
            raise KeyboardInterrupt
        return original.run(job, config, hook)

    monkeypatch.setitem(targets_mod.TARGETS, "toy-regression", targets_mod.Target(original.config_cls,
                                                                                  interrupt_on_trial_4))
    with pytest.raises(KeyboardInterrupt):
        run_job(toy_job(tmp_path, n_trials=6, pruner="none"), log=lambda m: None)
    # what finished is kept and written out, including the best model so far
    written = json.loads((tmp_path / "out" / "best.json").read_text())
    assert written["counts"] == {"complete": 4, "fail": 1}
    kept = json.loads((tmp_path / "out" / "best" / "lmopt.json").read_text())["tune"]
    assert kept["value"] == min(t.value for t in complete(open_study(toy_job(tmp_path))))

    monkeypatch.setitem(targets_mod.TARGETS, "toy-regression", original)
    result = run_job(toy_job(tmp_path, n_trials=6, pruner="none"), log=lambda m: None)
    study = open_study(toy_job(tmp_path))
    assert {t.number: t.value for t in study.trials if t.number < 3} == first
    assert result.counts == {"complete": 6, "fail": 1}
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 4]
    assert len(retry) == 1 and retry[0].params == study.trials[4].params
    assert retry[0].state == optuna.trial.TrialState.COMPLETE
    # the budget is spent: one more run does nothing
    again = run_job(toy_job(tmp_path, n_trials=6, pruner="none"), log=lambda m: None)
    assert len(again.trials) == 7


def test_multi_objective_reports_the_pareto_set(tmp_path):
    result = run_job(toy_job(tmp_path, objectives=["eval_loss", "params"], n_trials=10, plots=True),
                     log=lambda m: None)
    done = [(r["number"], r["values"]) for r in result.trials if r["state"] == "complete"]
    assert len(done) == 10  # no pruning with several objectives

    def dominated(v):
        return any(w[0] <= v[0] and w[1] <= v[1] and w != v for _, w in done)

    assert {p["number"] for p in result.pareto} == {n for n, v in done if not dominated(v)}
    assert result.directions == ["minimize", "minimize"]
    assert (tmp_path / "out" / "history-1.png").exists()
    assert "## Pareto set" in (tmp_path / "out" / "report.md").read_text()


def test_enqueue_base_runs_the_default_first(tmp_path):
    job = TuneJob(target="toy-regression", base={"optim": {"lr": 0.01}, "hidden": 8}, space=SPACE,
                  tune=TuneConfig(n_trials=2, output=str(tmp_path / "out"), enqueue_base=True, plots=False))
    result = run_job(job, log=lambda m: None)
    assert result.trials[0]["params"] == {"optim.lr": 0.01, "hidden": 8}


def test_bad_jobs_fail_before_any_trial(tmp_path):
    with pytest.raises(ValueError, match="2 directions for 1 objectives"):
        TuneConfig(directions=["minimize", "maximize"])
    assert TuneConfig(objectives=["arc_easy:acc", "trial_seconds"]).resolved_directions() == \
        ["maximize", "minimize"]
    bad = toy_job(tmp_path)
    bad.base = {"stepz": 3}
    with pytest.raises(LmoptError, match="toy-regression config: stepz: unknown field"):
        run_job(bad, log=lambda m: None)
    with pytest.raises(LmoptError, match="cannot be tuned"):
        run_job(TuneJob(target="quantize", space=SPACE), log=lambda m: None)
    with pytest.raises(LmoptError, match="objective 'nope': the toy-regression step returned no such metric"):
        run_job(toy_job(tmp_path, objectives=["nope"]), log=lambda m: None)


def test_a_trial_whose_worker_died_is_failed_and_replayed(tmp_path):
    import time

    job = toy_job(tmp_path, n_trials=2, pruner="none", heartbeat_s=1)
    study = open_study(job)
    dead = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
                      "hidden": optuna.distributions.CategoricalDistribution([4, 8, 16, 32])})
    study._storage.record_heartbeat(dead._trial_id)  # its worker sent one heartbeat, then was killed
    # > grace period (4 x heartbeat_s) by more than a second: SQLite stores heartbeats to the second, so a
    # 4.5 s wait could read as exactly 4 s and leave the trial RUNNING (a flaky failure seen in CI).
    time.sleep(6)
    result = run_job(job, log=lambda m: None)
    trials = open_study(job).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params == trials[0].params
    assert result.counts == {"fail": 1, "complete": 2}
