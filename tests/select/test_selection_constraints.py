"""Constraint strings, the Pareto front (against brute force) and the best feasible pick."""

from __future__ import annotations

import itertools
import random

import pytest

from lmopt.errors import LmoptError
from lmopt.select.selection_config import SelectConfig
from lmopt.select.selection_constraints import (
    METRICS,
    best_feasible,
    dominates,
    pareto_front,
    parse_constraints,
)


def test_constraints_parse():
    parsed = parse_constraints("latency_p50_ms<=50, peak_mb < 800,accuracy>=0.7 , size_mb>1e1")
    assert [(c.metric, c.op, c.value) for c in parsed] == [
        ("latency_p50_ms", "<=", 50.0), ("peak_mb", "<", 800.0), ("accuracy", ">=", 0.7), ("size_mb", ">", 10.0)]
    assert parse_constraints("") == [] and parse_constraints(["a_s<=1"] * 0) == []
    c = parsed[0]
    assert c.holds(50) and not c.holds(50.5) and not c.holds(None)
    assert c.violation(60) == 10 and c.violation(40) == 0


@pytest.mark.parametrize("text, message", [
    ("latency<=5", "constraint 'latency<=5': unknown metric 'latency'"),
    ("latency_p50_ms<=abc", "constraint 'latency_p50_ms<=abc': expected METRIC<=NUMBER"),
    ("latency_p50_ms=<5", "expected METRIC<=NUMBER"),
    ("accuracy>=1.2", "constraint 'accuracy>=1.2' can never hold: accuracy is at most 1"),
    ("accuracy>1", "can never hold"),
    ("peak_mb<0", "constraint 'peak_mb<0' can never hold: peak_mb is at least 0"),
    ("peak_mb>=900,peak_mb<=800", "constraints 'peak_mb>=900' and 'peak_mb<=800' can never hold together"),
    ("size_mb>5,size_mb<5", "can never hold together"),
])
def test_bad_constraints_name_the_constraint(text, message):
    with pytest.raises(LmoptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_constraints(text)


def test_config_rejects_bad_constraints_and_metrics_in_one_line():
    with pytest.raises(LmoptError) as exc:
        SelectConfig.parse({"constraints": "accuracy>=1.5"}, where="lmopt select")
    assert str(exc.value) == ("lmopt select: constraints: constraint 'accuracy>=1.5' can never hold: accuracy is "
                              "at most 1")
    with pytest.raises(LmoptError, match="objective: unknown metric 'speed'"):
        SelectConfig.parse({"objective": "speed"})
    with pytest.raises(LmoptError, match="objective: ref_nll is not measured for task type classify"):
        SelectConfig.parse({"objective": "ref_nll"})
    with pytest.raises(LmoptError, match="pareto_metrics: unknown metric 'p50'"):
        SelectConfig.parse({"pareto_metrics": ["accuracy", "p50"]})
    assert SelectConfig.parse({"task_type": "generate"}).front_metrics()[0] == "ref_nll"


def brute_front(rows, metrics):
    return sorted(i for i, r in enumerate(rows)
                  if not any(dominates(other, r, metrics) for j, other in enumerate(rows) if j != i))


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_matches_brute_force(seed):
    rng = random.Random(seed)
    metrics = rng.sample(["accuracy", "latency_p50_ms", "peak_mb", "adapt_s"], k=rng.randint(1, 4))
    # few distinct values, so ties and duplicate rows happen
    rows = [{m: rng.randint(0, 4) / (4 if m == "accuracy" else 1) for m in metrics} for _ in range(rng.randint(1, 30))]
    assert pareto_front(rows, metrics) == brute_front(rows, metrics)


def test_dominance_follows_each_metrics_direction():
    a = {"accuracy": 0.8, "latency_p50_ms": 10}
    b = {"accuracy": 0.7, "latency_p50_ms": 12}
    assert dominates(a, b, ["accuracy", "latency_p50_ms"]) and not dominates(b, a, ["accuracy", "latency_p50_ms"])
    assert not dominates(a, a, ["accuracy"])
    assert METRICS["throughput_items_s"].direction == "max" and METRICS["peak_mb"].direction == "min"


def test_best_feasible_against_brute_force():
    rng = random.Random(0)
    rows = [{"candidate": str(i), "accuracy": rng.random(), "latency_p50_ms": rng.uniform(5, 100),
             "peak_mb": rng.uniform(100, 2000), "size_mb": rng.uniform(10, 500)} for i in range(40)]
    for text in ["", "latency_p50_ms<=30", "peak_mb<=500,latency_p50_ms<=50", "accuracy>=0.99,peak_mb<=120"]:
        constraints = parse_constraints(text)
        ok = [i for i, r in enumerate(rows) if all(c.holds(r[c.metric]) for c in constraints)]
        expected = max(ok, key=lambda i: rows[i]["accuracy"]) if ok else None
        assert best_feasible(rows, constraints, "accuracy") == expected
        latency = best_feasible(rows, constraints, "latency_p50_ms")
        assert latency == (min(ok, key=lambda i: rows[i]["latency_p50_ms"]) if ok else None)


def test_rows_missing_a_metric_stay_off_the_front():
    rows = [{"accuracy": 0.9, "latency_p50_ms": None}, {"accuracy": 0.5, "latency_p50_ms": 5}]
    assert pareto_front(rows, ["accuracy", "latency_p50_ms"]) == [1]
    assert list(itertools.chain(pareto_front([], ["accuracy"]))) == []
