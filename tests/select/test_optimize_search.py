"""`optimize` end to end on the tiny model: a few trials, outputs after each, resume after a kill, caching.

Every search here measures in this process (`isolate=False`) with a few 64-token windows, so a trial takes
seconds; one test checks that the isolated measurement gives the same figures.
"""

import json
from pathlib import Path

import pytest
import torch

import lmopt.select.optimize as optimize_module
from lmopt.errors import LmoptError
from lmopt.pipeline import load_recipe_file, run_recipe
from lmopt.select.optimize import Search, optimize, prepare
from lmopt.select.optimize_config import OptimizeConfig
from lmopt.select.optimize_front import pareto_front
from lmopt.select.optimize_measure import MeasureSpec, measure_here, measure_isolated
from lmopt.select.optimize_step import OPTIMIZE
from lmopt.select.search_space import Candidate
from lmopt.step import StepContext

TINY = {"limit": 2, "seq_len": 64, "calibration_samples": 4, "prefill_len": 16, "new_tokens": 4, "repeats": 1,
        "finetune_steps": 2}
SPACE = {"dtypes": ["float32"], "threads": [1], "quantize": ["none", "rtn", "gptq"], "bits": [4, 8],
         "group_sizes": [32], "prune": ["none", "structured"], "prune_amounts": [0.25], "prune_layers": [0]}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def tiny_config(model: Path, out: Path, **fields) -> OptimizeConfig:
    base = {"models": [str(model)], "objective": "pydoc:perplexity", "budget_min": 30, "output": str(out),
            "isolate": False, "cheap": TINY, "full": {**TINY, "limit": 3}, "startup_trials": 2, "space": SPACE}
    return OptimizeConfig.parse({**base, **fields})


def read(path: Path):
    return json.loads(path.read_text())


def test_a_few_trials_find_a_feasible_point_and_write_everything(tiny_dir, tmp_path):
    out = tmp_path / "out"
    # size_mb: the float32 tiny model is about 0.4 MB, 8-bit ~0.12 MB: the base itself is infeasible
    config = tiny_config(tiny_dir, out, n_trials=3, constraints=["ppl_ratio<=1.05, size_mb<=0.3"])
    result = optimize(config, log=lambda _line: None)
    assert result.counts.get("complete", 0) >= 3 and result.any_feasible and result.best["feasible"]
    assert result.best["full"]["size_mb"] <= 0.3 and result.best["full"]["ppl_ratio"] <= 1.05
    for name in ("best/config.json", "best.json", "front.json", "trials.json", "pareto.png", "report.md",
                 "study.db", "references.json"):
        assert (out / name).exists(), name
    front = read(out / "front.json")
    assert front["any_feasible"] and read(out / "best.json")["trial"] == result.best["number"]
    # the front on disk is exactly the non-dominated feasible full measurements
    feasible = [r for r in read(out / "trials.json") if r["full"] and r["feasible"]]
    values = [(r["full"]["pydoc:perplexity"], r["full"]["decode_tok_s"]) for r in feasible]
    expected = sorted(feasible[i]["number"] for i in pareto_front(values, ["minimize", "maximize"]))
    assert sorted(p["trial"] for p in front["points"]) == expected
    assert "## Pareto front" in (out / "report.md").read_text()
    # the best point's recipe rebuilds its model and measures the same perplexity
    recipe, folder = load_recipe_file(out / front["points"][0]["recipe"])
    recipe.workdir = str(tmp_path / "rebuild")
    summary = run_recipe(recipe, folder, log=lambda _line: None)
    point = front["points"][0]["metrics"]
    measured = summary["evaluation"][summary["output"]]["tasks"]["pydoc"]["perplexity"]
    assert measured == pytest.approx(point["pydoc:perplexity"], rel=1e-6)


def test_best_so_far_exists_after_the_first_trial(tiny_dir, tmp_path):
    out = tmp_path / "out"
    # nothing can meet this: the best is then the closest measured point, and the front says so
    result = optimize(tiny_config(tiny_dir, out, n_trials=1, constraints=["size_mb<=0.001"]), log=lambda _line: None)
    assert result.counts == {"complete": 1} and not result.any_feasible
    assert (out / "best" / "config.json").exists() and read(out / "best.json")["trial"] == 0
    assert read(out / "front.json")["points"][0]["trial"] == 0
    assert "none meets every constraint" in (out / "report.md").read_text()


class Killed(BaseException):
    """Stands in for SIGKILL: nothing catches it, so the trial stays RUNNING in the study."""


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, Killed])
def test_a_run_killed_mid_trial_resumes_and_loses_only_that_trial(tiny_dir, tmp_path, monkeypatch, interrupt):
    out = tmp_path / "out"
    optimize(tiny_config(tiny_dir, out, n_trials=1), log=lambda _line: None)
    first = read(out / "trials.json")[0]
    best = (out / "best.json").read_text()

    def dying(spec, isolate, scratch):
        raise interrupt()  # trial 1 dies in its first measurement, after its pipeline was built

    monkeypatch.setattr(optimize_module, "measure", dying)
    with pytest.raises(interrupt):
        optimize(tiny_config(tiny_dir, out, n_trials=3), log=lambda _line: None)
    assert (out / "best.json").read_text() == best and (out / "best" / "config.json").exists()

    monkeypatch.undo()
    logs: list[str] = []
    result = optimize(tiny_config(tiny_dir, out, n_trials=3), log=logs.append)
    records = [r for r in read(out / "trials.json") if r["duplicate_of"] is None]  # repeats cost nothing
    assert result.stopped == "n_trials"
    assert sorted(r["state"] for r in records) == ["complete", "complete", "complete", "fail"]
    (lost,) = [r for r in records if r["state"] == "fail"]
    (retry,) = [r for r in records if r["retry_of"] == lost["number"]]
    assert lost["number"] == 1 and retry["state"] == "complete" and retry["params"] == lost["params"]
    assert records[0] == first  # the finished trial was kept, not run again
    assert not any(line.startswith("reference") for line in logs)  # nor the reference measurements
    assert any("cached" in line for line in logs)  # the lost trial's pipeline was built before the kill


def test_too_small_a_budget_is_one_clear_error(tiny_dir, tmp_path):
    with pytest.raises(LmoptError, match=r"budget of 0.001 min is too small for one trial: about \d+ s"):
        optimize(tiny_config(tiny_dir, tmp_path / "out", budget_min=0.001), log=lambda _line: None)
    with pytest.raises(LmoptError, match="nosuchtask.txt: file not found"):
        optimize(tiny_config(tiny_dir, tmp_path / "o2", objective="nosuchtask.txt:perplexity"))
    optimize(tiny_config(tiny_dir, tmp_path / "o3", n_trials=1), log=lambda _line: None)
    with pytest.raises(LmoptError, match="holds a search with other settings"):
        optimize(tiny_config(tiny_dir, tmp_path / "o3", n_trials=1, objective="pydoc:perplexity",
                             constraints=["peak_mb<=900"]))


def test_pipelines_sharing_a_prefix_compute_it_once(tiny_dir, tmp_path):
    config = prepare(tiny_config(tiny_dir, tmp_path / "out", train_data="pydoc-train"), tmp_path)
    logs: list[str] = []
    search = Search(config, tmp_path / "out", tmp_path, logs.append)
    assert search.space.finetune == ("none", "lora")  # searched because there is training data
    common = {"base": str(tiny_dir), "finetune": "lora", "prune": "structured", "prune_amount": 0.25,
              "dtype": "float32"}
    first, steps = search.build(Candidate(**common, quantize="rtn", bits=8), "cheap")
    second, _ = search.build(Candidate(**common, quantize="gptq", bits=4, group_size=32), "cheap")
    assert first != second and steps[0]["finetune"]["max_steps"] == TINY["finetune_steps"]
    assert [line.split("(")[0].strip() for line in logs] == [
        "[1/3] finetune", "[2/3] prune", "[3/3] quantize", "[1/3] finetune", "[2/3] prune", "[3/3] quantize"]
    assert [line.endswith("cached") for line in logs] == [False, False, False, True, True, False]


def test_isolated_measurement_equals_the_in_process_one(tiny_dir, tmp_path):
    spec = MeasureSpec(model=str(tiny_dir), dtype="float32", threads=1, tasks=["pydoc"],
                       fidelity={**TINY, "limit": 2})
    here, there = measure_here(spec), measure_isolated(spec, tmp_path / "scratch")
    assert there["tasks"]["pydoc"]["perplexity"] == pytest.approx(here["tasks"]["pydoc"]["perplexity"], rel=1e-9)
    assert there["size_mb"] == here["size_mb"] and there["params_m"] == here["params_m"]
    assert there["peak_mb"] > 0 and there["decode_tok_s"] > 0
    assert not list((tmp_path / "scratch").iterdir())  # spec and result files removed
    bad = spec.model_copy(update={"model": str(tmp_path / "missing")})
    with pytest.raises(LmoptError, match=f"measuring {tmp_path / 'missing'}: .*no such model directory"):
        measure_isolated(bad, tmp_path / "scratch")


def test_the_step_continues_the_recipe_with_the_chosen_model(tiny_dir, tmp_path):
    fields = tiny_config(tiny_dir, tmp_path / "search", n_trials=1).to_dict()
    fields["models"], fields["output"] = [], "search"
    config = OPTIMIZE.parse(fields, where="steps.0.optimize")
    ctx = StepContext(model=tiny_dir, data=None, output=tmp_path / "step" / "artifact", base_dir=tmp_path)
    result = OPTIMIZE.run(ctx, config)
    assert result.model == ctx.output and (ctx.output / "config.json").exists()
    assert result.metrics["best_trial"] == 0 and result.metrics["output"] == str(tmp_path / "search")
    assert read(tmp_path / "search" / "best.json")["trial"] == 0


def test_rotate_gptq_is_searched_and_enqueued_by_default(tiny_dir, tmp_path):
    """The default space draws rotate+GPTQ (the best measured 4-bit quality) and enqueues it at W4 g128;
    a drawn candidate builds a rotate+gptq quantize step whose model evaluates like its parent's."""
    from lmopt.select.search_space import Space, default_params

    config = OptimizeConfig.parse({"models": [str(tiny_dir)], "objective": "pydoc:perplexity", "output": "o"})
    assert "rotate+gptq" in config.space.quantize
    enqueued = default_params(Space.build(config, [str(tiny_dir)]))
    assert {"quantize": "rotate+gptq", "bits": 4, "group_size": 128, "lm_head_bits": 8}.items() <= enqueued[2].items()
    search = Search(prepare(tiny_config(tiny_dir, tmp_path / "out", space={**SPACE, "quantize": ["rotate+gptq"]}),
                            tmp_path), tmp_path / "out", tmp_path, lambda _line: None)
    candidate = Candidate(base=str(tiny_dir), quantize="rotate+gptq", bits=4, group_size=32, dtype="float32")
    model, steps = search.build(candidate, "cheap")
    assert steps == [{"quantize": {"method": "rotate+gptq", "bits": 4, "group_size": 32, "lm_head_bits": 8,
                                   "calibration": {"n_samples": TINY["calibration_samples"]}}}]
    assert "rotate+gptq w4 g32" in candidate.label()
    # a model type the rotation does not know (GPT-2 here) is not offered rotate+gptq at all
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    assert "rotate+gptq" not in Space.build(config, [str(gpt2)]).quantize
    assert "rotate+gptq" in Space.build(config, [str(tiny_dir)]).quantize
    only = OptimizeConfig.parse({**config.to_dict(), "space": {"quantize": ["rotate+gptq"]}})
    with pytest.raises(LmoptError, match="cannot rotate"):
        Space.build(only, [str(gpt2)])
    here = measure_here(MeasureSpec(model=str(model), dtype="float32", threads=1, tasks=["pydoc"], fidelity=TINY))
    base = measure_here(MeasureSpec(model=str(tiny_dir), dtype="float32", threads=1, tasks=["pydoc"], fidelity=TINY))
    # a random tiny model: 4 bits after a rotation stays within 10% of its parent's perplexity
    assert here["tasks"]["pydoc"]["perplexity"] == pytest.approx(base["tasks"]["pydoc"]["perplexity"], rel=0.1)


def test_shipped_optimize_recipe_runs_on_a_tiny_model_and_logs_its_trials(tiny_dir, tmp_path):
    """`optimize-embedded.yaml` with the tiny model, a short objective and tiny fidelities: the recipe
    runner prints the search's trial lines under the step's line, and the chosen model goes on."""
    import yaml

    import lmopt
    from lmopt.pipeline import Recipe

    data = yaml.safe_load((Path(lmopt.__file__).parent / "recipes" / "optimize-embedded.yaml").read_text())
    step = data["steps"][0]["optimize"]
    assert step["constraints"] == ["decode_speedup>=2", "ppl_ratio<=1.2"] and step["budget_min"] == 60
    step.update(objective="pydoc:perplexity", constraints=["ppl_ratio<=1.5"], n_trials=1, isolate=False,
                cheap=TINY, full=TINY, space={**step["space"], "threads": [1], "dtypes": ["float32"],
                                              "group_sizes": [32], "prune": ["none"]})
    data.update(model=str(tiny_dir), workdir=str(tmp_path / "w"))
    lines: list[str] = []
    summary = run_recipe(Recipe.parse(data), tmp_path, log=lines.append)
    assert lines[0].startswith("[1/1] optimize") and any(line.startswith("  trial 0:") for line in lines)
    metrics = summary["steps"][0]["metrics"]
    assert metrics["best_trial"] == 0 and (Path(metrics["output"]) / "best.json").exists()
