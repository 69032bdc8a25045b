"""The improvement loop on tiny models: rated rows -> data, lineage replay (quantize re-applied), the gate
deciding promotion, a run killed between stages resuming from the cached steps, and bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from lmopt.cli.monitoring import run_recipe_map
from lmopt.data.text import pydoc_text
from lmopt.errors import LmoptError
from lmopt.models import ModelCard, content_hash, save_tiny_llama
from lmopt.monitor import Registry, aliases, promote, register_model
from lmopt.monitor.improve import ImproveConfig, float_source, improve
from lmopt.monitor.improve_data import feedback_rows
from lmopt.monitor.traffic import TrafficStore
from lmopt.pipeline import one_step_recipe, run_recipe
from lmopt.serve.telemetry import FeedbackRecord, TrafficRecord

from .monitor_cli import cli

FAST_TRAIN = {"method": "lora", "format": "chat", "max_steps": 2, "batch_size": 2, "seq_len": 64,
              "val_fraction": 0.0, "save_every": None, "lr": 1e-4}
QUANTIZE = {"method": "rtn", "bits": 8, "group_size": 32}
PYDOC_EVAL_PARAGRAPH = max(pydoc_text("eval").split("\n\n")[:50], key=len)
ANSWERS = ["A list keeps items in order and can change.", "A tuple is an immutable sequence.",
           "A dict maps keys to values.", "A set holds unique items."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(float base dir, its RTN W8 quantized child dir, suite path, items path)."""
    root = tmp_path_factory.mktemp("improve")
    base = save_tiny_llama(root / "base")
    summary = run_recipe(one_step_recipe("quantize", QUANTIZE, str(base), workdir=str(root / "q")), root,
                         log=lambda m: None)
    items = root / "items.jsonl"
    items.write_text("".join(json.dumps({"query": f"Question {i}: what is {i} plus {i}?",
                                         "choices": [str(2 * i), str(2 * i + 1)], "gold": 0}) + "\n"
                             for i in range(12)))
    return base, Path(summary["output"]), items


def suite_file(path: Path, items: Path, max_increase: float = 10.0) -> Path:
    suite = {"name": "tiny", "dtype": "float32", "resamples": 200,
             "tasks": [{"task": f"mc:{items}", "limit": 12, "max_drop": 1.0}],
             "perplexity": [{"source": "pydoc", "windows": 4, "seq_len": 64, "max_increase": max_increase}]}
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.fixture()
def setup(models, tmp_path):
    """A registry with @production on the quantized model, and a traffic store with rated requests."""
    base, quantized, items = models
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    register_model(quantized, registry)
    promote(quantized, "production", registry)
    store = TrafficStore(f"sqlite:///{tmp_path / 'traffic.db'}", scrub_pii=False)  # clean must scrub it
    now = time.time()
    for i in range(24):
        question = f"Question {i}: what is a {['list', 'tuple', 'dict', 'set'][i % 4]} in Python?"
        store.record(TrafficRecord(f"cmpl-{i}", "completions", "tiny", None, question, None, ANSWERS[i % 4], 9, 9,
                                   "stop", False, 0.01, 0.02, now - 60 + i))
    store.record(TrafficRecord("cmpl-pii", "completions", "tiny", None, "I am jane@example.com, what is a list?",
                               None, ANSWERS[0], 9, 9, "stop", False, 0.01, 0.02, now))
    store.record(TrafficRecord("cmpl-leak", "completions", "tiny", None, "Tell me about Python.", None, "?", 9, 9,
                               "stop", False, 0.01, 0.02, now))
    store.flush()
    for i in range(24):
        correction = f"Corrected: {ANSWERS[(i + 1) % 4]}" if i % 6 == 0 else None
        store.add_feedback(FeedbackRecord(f"cmpl-{i}", -1.0 if i % 5 == 4 else 1.0, correction, None, now))
    store.add_feedback(FeedbackRecord("cmpl-pii", 1.0, None, None, now))
    store.add_feedback(FeedbackRecord("cmpl-leak", -1.0, PYDOC_EVAL_PARAGRAPH, None, now))  # the suite's text
    config = ImproveConfig(feedback="hours:1", suite=str(suite_file(tmp_path / "suite.yaml", items)), min_rows=4,
                           finetune=FAST_TRAIN, workdir=str(tmp_path / "work"),
                           clean={"quality": {"enabled": False}, "pii": {"enabled": True}, "workers": 1,
                                  "dedup": {"mode": "exact"}})
    yield registry, store, config
    store.close()


def test_rated_rows_become_training_data():
    rated = [
        {"response_id": "a", "rating": 1.0, "correction": None, "prompt": "Q a", "response": "good\n\n\nanswer",
         "messages": None},
        {"response_id": "b", "rating": -1.0, "correction": "the right one", "prompt": "Q b", "response": "bad",
         "messages": None},
        {"response_id": "c", "rating": -1.0, "correction": None, "prompt": "Q c", "response": "bad", "messages": None},
        {"response_id": "d", "rating": 1.0, "correction": None, "prompt": "sys\n\nQ d", "response": "fine",
         "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q d"}]},
        {"response_id": "b", "rating": 0.0, "correction": None, "prompt": "Q b", "response": "bad", "messages": None},
        {"response_id": "a", "rating": 0.2, "correction": None, "prompt": "Q a", "response": "good", "messages": None},
    ]
    rows, counts = feedback_rows(rated, min_rating=0.5)
    # a: its latest rating (0.2) is below 0.5; b: a later plain rating keeps its correction; c: bad, no correction
    assert rows == [{"prompt": "Q b", "response": "the right one"}, {"prompt": "sys\nQ d", "response": "fine"}]
    assert counts == {"rated": 4, "corrections": 1, "well_rated": 1, "truncated": 0, "left_out": 2}
    # a well-rated answer the server cut at max_tokens is not a complete answer to learn from;
    # a correction of a cut answer is
    cut = [{**rated[0], "finish_reason": "length"}, {**rated[1], "finish_reason": "length"}]
    rows, counts = feedback_rows(cut, min_rating=0.5)
    assert rows == [{"prompt": "Q b", "response": "the right one"}]
    assert counts == {"rated": 2, "corrections": 1, "well_rated": 0, "truncated": 1, "left_out": 0}
    rows, _ = feedback_rows(rated[:1], min_rating=0.5)
    assert rows == [{"prompt": "Q a", "response": "good\nanswer"}]  # blank lines folded (clean writes fields back)


def test_float_source_walks_back_past_compression(setup, models):
    registry, _, _ = setup
    base, quantized, _ = models
    source, replay = float_source("@production", registry)
    assert source.hash == content_hash(base)
    [(step, config)] = [next(iter(r.items())) for r in replay]
    assert step == "quantize" and config == ModelCard.read(quantized).config and config["bits"] == 8


def test_dry_run_plans_and_changes_nothing(setup, tmp_path):
    registry, store, config = setup
    before = aliases(registry)
    report = improve(config, registry=registry, traffic=store, dry_run=True, log=lambda m: None)
    plan = report.plan
    assert report.dry_run and not report.promoted and aliases(registry) == before
    assert plan.feedback == {"rated": 26, "corrections": 5, "well_rated": 17, "truncated": 0, "left_out": 4, "rows": 22}
    assert [next(iter(s)) for s in plan.recipe["steps"]] == ["clean", "finetune", "quantize"]
    assert any(name.startswith("mc:") for name in plan.recipe["steps"][0]["clean"]["decontaminate"])
    assert "pydoc" in plan.recipe["steps"][0]["clean"]["decontaminate"]
    assert not (tmp_path / "work").exists()


def test_passing_gate_promotes_the_replayed_candidate(setup, models):
    registry, store, config = setup
    base, _, _ = models
    report = improve(config, run=run_recipe_map, registry=registry, traffic=store, log=lambda m: None)
    assert report.promoted and report.gate["passed"], report.reason
    assert aliases(registry)["production"] == report.candidate["hash"]
    candidate = ModelCard.read(Path(report.candidate["path"]))
    assert candidate.step == "quantize" and candidate.config["bits"] == 8 and candidate.config["method"] == "rtn"
    tuned = ModelCard.read(Path(candidate.parent))
    assert tuned.step == "finetune" and tuned.parent_hash == content_hash(base)
    clean = report.steps[0]["metrics"]
    assert (clean["rows_in"], clean["rows_out"], clean["pii"]) == (22, 21, {"email": 1})
    assert clean["removed"] == {"decontaminate:pydoc": 1}
    trained = Path(report.steps[0]["data"]).read_text()
    assert "jane@example.com" not in trained and "<EMAIL>" in trained
    [run] = registry.query(kind="improve")
    assert run["metrics"]["promoted"] is True
    assert [len(registry.query(kind=k)) for k in ("clean", "finetune", "quantize", "gate")] == [1, 1, 1, 1]


def test_failing_gate_keeps_production(setup, models, tmp_path):
    registry, store, config = setup
    _, _, items = models
    strict = suite_file(tmp_path / "strict.yaml", items, max_increase=0.01)
    wrecked = {**FAST_TRAIN, "method": "full", "lr": 0.5, "max_steps": 4}  # ruins the model on purpose
    config = config.model_copy(update={"suite": str(strict), "finetune": config.finetune.model_copy(update=wrecked)})
    before = aliases(registry)["production"]
    report = improve(config, run=run_recipe_map, registry=registry, traffic=store, log=lambda m: None)
    assert not report.promoted and not report.gate["passed"]
    assert report.reason.startswith("the gate failed: perplexity/pydoc") and before in report.reason
    assert aliases(registry)["production"] == before


def test_a_killed_run_resumes_from_its_cached_steps(setup, monkeypatch):
    import lmopt.compress.quantize.step as quantize_module
    from lmopt.step import Step

    registry, store, config = setup
    real = quantize_module.QUANTIZE

    def killed(ctx, cfg):
        raise KeyboardInterrupt("killed during quantize")

    monkeypatch.setattr(quantize_module, "QUANTIZE", Step("quantize", real.config, killed))
    with pytest.raises(KeyboardInterrupt):
        improve(config, run=run_recipe_map, registry=registry, traffic=store, log=lambda m: None)
    monkeypatch.setattr(quantize_module, "QUANTIZE", real)
    lines: list[str] = []
    report = improve(config, run=run_recipe_map, registry=registry, traffic=store, log=lines.append)
    assert report.promoted
    assert any("clean" in line and line.endswith("cached") for line in lines)
    assert any("finetune" in line and line.endswith("cached") for line in lines)
    assert not any("quantize" in line and line.endswith("cached") for line in lines)


def test_a_run_killed_before_promotion_reuses_its_gate(setup, monkeypatch):
    import lmopt.monitor.improve as improve_module

    registry, store, config = setup
    real = improve_module.promote

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before promoting")

    monkeypatch.setattr(improve_module, "promote", killed)
    with pytest.raises(KeyboardInterrupt):
        improve(config, run=run_recipe_map, registry=registry, traffic=store, log=lambda m: None)
    monkeypatch.setattr(improve_module, "promote", real)
    lines: list[str] = []
    report = improve(config, run=run_recipe_map, registry=registry, traffic=store, log=lines.append)
    assert report.promoted and aliases(registry)["production"] == report.candidate["hash"]
    assert any(line.startswith("gate") and line.endswith("cached") for line in lines)
    assert sum(line.endswith("cached") for line in lines) == 5  # clean (twice), finetune, quantize, gate


def test_bad_input(setup, tmp_path):
    registry, store, config = setup
    for update, message in (({"feedback": "range:1..2"}, "no rated responses"),
                            ({"model": "@nope"}, "unknown model alias '@nope'"),
                            ({"feedback": str(tmp_path / "suite.yaml")}, "a traffic window")):
        with pytest.raises(LmoptError, match=message):
            improve(config.model_copy(update=update), registry=registry, traffic=store, dry_run=True)
    unhelpful = TrafficStore(f"sqlite:///{tmp_path / 'bad.db'}")
    unhelpful.record(TrafficRecord("cmpl-x", "completions", "tiny", None, "Q", None, "A", 1, 1, "stop", False,
                                   0.01, 0.02, time.time()))
    unhelpful.flush()
    unhelpful.add_feedback(FeedbackRecord("cmpl-x", -1.0, None, "wrong", time.time()))
    with pytest.raises(LmoptError, match="1 rated responses, none rated at least 0.5 or corrected"):
        improve(config, registry=registry, traffic=unhelpful, dry_run=True)
    unhelpful.close()
    with pytest.raises(LmoptError, match="give `run`"):
        improve(config, registry=registry, traffic=store, log=lambda m: None)


def test_cli_improve(setup, tmp_path):
    registry, store, config = setup
    path = tmp_path / "improve.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    common = ["--config", str(path), "--registry", registry.url, "--traffic", store.url]
    out = tmp_path / "plan.json"
    status, text = cli(["improve", *common, "--dry-run", "--json", str(out)])
    assert status == 0 and "dry run" in text and "quantize" in text
    assert json.loads(out.read_text())["plan"]["feedback"]["rows"] == 22
    status, text = cli(["improve", *common, "--set", "finetune.max_steps=1"])
    assert status == 0 and "promoted" in text
    status, message = cli(["improve", *common, "--model", "@nope", "--dry-run"])
    assert status == 2 and "unknown model alias '@nope'" in message
    status, message = cli(["improve", *common, "--feedback", "range:1..2", "--dry-run"])
    assert status == 2 and "no rated responses" in message
    status, message = cli(["improve", *common, "--set", "finetune.bogus=1", "--dry-run"])
    assert status == 2 and "finetune.bogus" in message


def test_the_shipped_recipe_form_parses():
    from importlib.resources import files

    config = ImproveConfig.from_yaml(str(files("lmopt") / "recipes" / "improve-pubmed.yaml"))
    assert config.model == "@production" and config.finetune.method == "lora" and config.clean.pii.enabled
