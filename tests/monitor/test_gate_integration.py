"""The gate on the real embedded model: against itself it passes with zero differences (a short suite)."""

from __future__ import annotations

import pytest

from lmopt.data.tasks import load_task
from lmopt.data.text import load_text
from lmopt.monitor.gate import check
from lmopt.monitor.suite import Suite, load_suite

pytestmark = pytest.mark.integration


def test_embedded_model_against_itself_passes(data_dir):
    suite = Suite.parse({"name": "embedded-self", "resamples": 500,
                         "tasks": [{"task": "arc_easy", "limit": 20}],
                         "perplexity": [{"source": "pydoc", "windows": 4, "seq_len": 256}]})
    report = check("smollm2-135m-instruct", "smollm2-135m-instruct", suite, data_dir=data_dir)
    assert report.passed
    for m in report.metrics:
        assert (m.estimate, m.low, m.high) == (0.0, 0.0, 0.0), m.name
    arc = report.metrics[0]
    assert arc.n == 20 and 0.2 < arc.baseline < 0.9  # a trained model, not chance on 4 choices alone


def test_quick_suite_names_only_available_data(data_dir):
    suite = load_suite("quick")
    for gate in suite.tasks:
        assert len(load_task(gate.task, data_dir, gate.limit)) == gate.limit
    for gate in suite.perplexity:
        assert load_text(gate.source, data_dir)
