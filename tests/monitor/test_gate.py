"""Regression gate on tiny models: per-unit results match evaluate's, a model passes against itself, a
damaged one fails, reports and registry rows are written, bad suites are one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml

from lmopt.data.tasks import load_task
from lmopt.errors import LmoptError
from lmopt.evaluate.mc import score_items
from lmopt.evaluate.paired import item_scores, peak_memory_mb, weights_mb, window_nlls
from lmopt.evaluate.perplexity import perplexity
from lmopt.models import content_hash, load_model, save_model, save_tiny_llama
from lmopt.monitor import Registry, register_model
from lmopt.monitor.gate import check
from lmopt.monitor.gate_report import verdict, write_reports
from lmopt.monitor.suite import QUICK_SUITE, Suite, load_suite

# Speed and memory run so their code paths are covered; their tolerances are wide on purpose, since
# the test machine's timing is not something a test may assert on.
SUITE = {
    "name": "tiny", "dtype": "float32", "resamples": 500,
    "tasks": [{"task": "mc:items.jsonl", "limit": 20, "max_drop": 0.05}],
    "perplexity": [{"source": "pydoc", "windows": 6, "seq_len": 64, "max_increase": 0.05}],
    "speed": {"repeats": 2, "new_tokens": 4, "prompt_len": 8, "min_ratio": 0.001},
    "memory": {"repeats": 2, "prompt_len": 16, "max_ratio": 100.0, "max_mb": 10_000},
}


def write_items(path, n=20):
    rows = [{"query": f"Question {i}: what is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1), str(i)],
             "gold": i % 3} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(base dir, damaged dir: every weight plus N(0, 0.5) noise, suite path)."""
    import torch

    root = tmp_path_factory.mktemp("gate")
    base = save_tiny_llama(root / "base")
    damaged = load_model(base, dtype="float32")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in damaged.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    bad = save_model(damaged.model, damaged.tokenizer, root / "damaged", damaged.card)
    write_items(root / "items.jsonl")
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    return base, bad, suite


def test_per_unit_results_match_evaluate(tiny, tmp_path):
    items = load_task(f"mc:{write_items(tmp_path / 'items.jsonl')}")
    per_item = item_scores(tiny.model, tiny.tokenizer, items, batch_size=4)
    means = score_items(tiny.model, tiny.tokenizer, items, batch_size=4)
    assert sum(per_item["acc"]) / len(items) == pytest.approx(means["acc"])
    assert sum(per_item["acc_norm"]) / len(items) == pytest.approx(means["acc_norm"])
    from lmopt.data.text import pydoc_text

    text = pydoc_text("eval")[:20_000]
    nlls = window_nlls(tiny.model, tiny.tokenizer, text, seq_len=64, limit=5, batch_size=2)
    ref = perplexity(tiny.model, tiny.tokenizer, text, seq_len=64, limit=5)
    assert len(nlls) == 5 and sum(nlls) / 5 == pytest.approx(ref["nll"], rel=1e-9)


def test_memory_counts_tied_weights_once(tiny):
    n_bytes = sum(p.numel() * p.element_size() for p in tiny.model.parameters())  # parameters() dedups ties
    assert weights_mb(tiny.model) == pytest.approx(n_bytes / 1e6, rel=0.01)
    assert peak_memory_mb(tiny.model, tiny.tokenizer, prompt_len=8) >= weights_mb(tiny.model)


def test_verdict_fails_only_when_the_whole_interval_is_beyond():
    assert verdict(-0.10, -0.04, -0.03, "below") == "fail"
    assert verdict(-0.05, 0.01, -0.03, "below") == "inconclusive"
    assert verdict(-0.01, 0.02, -0.03, "below") == "pass"
    assert verdict(0.06, 0.09, 0.05, "above") == "fail"
    assert verdict(0.01, 0.06, 0.05, "above") == "inconclusive"


def test_model_against_itself_passes_with_zero_differences(models, tmp_path):
    base, _, suite = models
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    register_model(base, reg)
    report = check(base, base, suite, registry=reg)
    assert report.passed and report.failed == []
    by_name = {m.name: m for m in report.metrics}
    assert set(by_name) == {"mc:items.jsonl/acc", "perplexity/pydoc", "speed/decode_tokens_per_s",
                            "memory/peak_ratio", "memory/peak_mb"}
    for name in ("mc:items.jsonl/acc", "perplexity/pydoc"):
        m = by_name[name]
        assert (m.estimate, m.low, m.high, m.verdict) == (0.0, 0.0, 0.0, "pass")
    assert by_name["perplexity/pydoc"].n == 6 and len(by_name["speed/decode_tokens_per_s"].samples["baseline"]) == 2
    # Stored: one gate row, one row per metric, figures on the registered model.
    (gate,) = reg.query(kind="gate")
    assert gate["id"] == report.registry_id and gate["metrics"]["passed"] is True
    assert gate["model_hash"] == content_hash(base) and gate["config"]["baseline_hash"] == content_hash(base)
    assert len(reg.query(kind="gate-metric")) == 5
    (row,) = reg.model_rows(content_hash(base))
    assert row["figures"]["tiny/perplexity/pydoc"] == pytest.approx(by_name["perplexity/pydoc"].candidate)


def test_damaged_model_fails_and_reports_are_written(models, tmp_path):
    base, bad, suite = models
    quality_only = load_suite(suite).model_copy(update={"speed": None, "memory": None})
    report = check(bad, base, quality_only)
    assert not report.passed and "perplexity/pydoc" in report.failed
    ppl = next(m for m in report.metrics if m.name == "perplexity/pydoc")
    assert ppl.low > 0.05 and ppl.candidate > ppl.baseline
    paths = write_reports(report, json_path=tmp_path / "r.json", markdown_path=tmp_path / "r.md",
                          html_path=tmp_path / "r.html")
    assert len(paths) == 3
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False
    markdown = (tmp_path / "r.md").read_text()
    assert "FAIL (perplexity/pydoc)" in markdown and "| perplexity/pydoc |" in markdown
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<td>fail</td>" in html  # intervals, windows


def test_suite_errors_are_one_line(tmp_path, models):
    def bad(text):
        path = tmp_path / "s.yaml"
        path.write_text(text)
        with pytest.raises(LmoptError) as err:
            load_suite(path)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "invalid YAML" in bad("tasks: [unclosed\n")
    assert "tasks.0.maxdrop: unknown field" in bad("tasks: [{task: piqa, maxdrop: 0.1}]\n")
    assert "unknown task 'hellaswag'" in bad("tasks: [{task: hellaswag}]\n")
    assert "at least one of" in bad("name: empty\n")
    assert "list it under perplexity" in bad("tasks: [{task: pydoc}]\n")
    assert "lambada has no acc_norm" in bad("tasks: [{task: lambada, metric: acc_norm}]\n")
    assert "file not found" in bad("tasks: [{task: 'mc:nowhere.jsonl'}]\n")
    with pytest.raises(LmoptError, match="file not found"):
        load_suite(tmp_path / "missing.yaml")


def test_bundled_quick_suite_and_relative_paths(models):
    quick = load_suite("quick")
    assert quick == load_suite(QUICK_SUITE) and quick.name == "quick"
    assert {g.task for g in quick.tasks} == {"arc_easy", "piqa"} and quick.speed and quick.memory
    suite = load_suite(models[2])
    assert suite.tasks[0].task == f"mc:{models[2].parent / 'items.jsonl'}"
    assert isinstance(suite, Suite)
