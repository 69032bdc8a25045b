"""The Pareto front against brute force and against Optuna's own; the best and promotion rules."""

import itertools
import random

import optuna
import pytest

from lmopt.select.optimize_config import OptimizeConfig
from lmopt.select.optimize_front import (
    choose_best,
    dominates,
    flat_metrics,
    front_of,
    pareto_front,
    promising,
    violations,
)


def brute_force_front(points, directions):
    """Straight from the definition: no other point is <= on every (minimized) objective and < on one."""
    sign = [1 if d == "minimize" else -1 for d in directions]
    front = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            better_or_equal = all(s * q[k] <= s * p[k] for k, s in enumerate(sign))
            strictly = any(s * q[k] < s * p[k] for k, s in enumerate(sign))
            if j != i and better_or_equal and strictly:
                dominated = True
        if not dominated:
            front.append(i)
    return front


@pytest.mark.parametrize("directions", list(itertools.product(["minimize", "maximize"], repeat=2)))
def test_two_objective_sweep_equals_brute_force(directions):
    rng = random.Random(0)
    for n in [0, 1, 2, 5, 30, 200]:
        for grid in (3, 1000):  # a coarse grid makes many ties and duplicates
            points = [(rng.randrange(grid), rng.randrange(grid)) for _ in range(n)]
            assert pareto_front(points, directions) == brute_force_front(points, directions)


def test_three_objectives_equal_brute_force():
    rng = random.Random(1)
    directions = ["minimize", "maximize", "minimize"]
    points = [tuple(rng.randrange(5) for _ in range(3)) for _ in range(80)]
    assert pareto_front(points, directions) == brute_force_front(points, directions)


def test_front_equals_optunas_best_trials_on_fixed_values():
    rng = random.Random(2)
    directions = ["minimize", "maximize"]
    points = [(round(rng.uniform(10, 30), 1), round(rng.uniform(5, 60), 1)) for _ in range(60)]
    study = optuna.create_study(directions=directions)
    for p in points:
        study.add_trial(optuna.trial.create_trial(values=list(p)))
    assert pareto_front(points, directions) == sorted(t.number for t in study.best_trials)


def test_fixed_example():
    # perplexity (min) and tokens/s (max): (20, 40) and (18, 30) trade off; (21, 35) is beaten by (20, 40)
    points = [(20, 40), (18, 30), (21, 35), (18, 30), (25, 50)]
    assert pareto_front(points, ["minimize", "maximize"]) == [0, 1, 3, 4]
    assert dominates((20, 40), (21, 35), ["minimize", "maximize"])
    assert not dominates((18, 30), (18, 30), ["minimize", "maximize"])


def _record(number, quality, speed, feasible, missed=0.0):
    return {"number": number, "full": {"pydoc:perplexity": quality, "decode_tok_s": speed}, "feasible": feasible,
            "violations": [missed]}


def test_best_is_the_feasible_optimum_else_the_closest():
    config = OptimizeConfig(objective="pydoc:perplexity", constraints=["decode_tok_s>=30"])
    records = [_record(0, 20, 25, False, 0.17), _record(1, 22, 31, True), _record(2, 21, 40, True),
               _record(3, 21, 45, True), {"number": 4, "full": None}]
    assert choose_best(records, config)["number"] == 3  # best perplexity, then faster decode
    front, any_feasible = front_of(records, config)
    assert any_feasible and [r["number"] for r in front] == [3]
    infeasible = [_record(0, 20, 25, False, 0.17), _record(1, 30, 29, False, 0.03)]
    assert choose_best(infeasible, config)["number"] == 1  # the least shortfall
    front, any_feasible = front_of(infeasible, config)
    assert not any_feasible and [r["number"] for r in front] == [0, 1]
    assert choose_best([{"number": 0, "full": None}], config) is None


def test_promising_needs_the_margin_and_no_dominating_estimate():
    directions = ["minimize", "maximize"]
    others = [((20.0, 40.0), [0.0]), ((15.0, 60.0), [0.5])]  # the second is far off a constraint
    assert promising((19.0, 41.0), [0.05], others, directions, margin=0.1)
    assert not promising((19.0, 41.0), [0.2], others, directions, margin=0.1)
    assert not promising((21.0, 39.0), [0.0], others, directions, margin=0.1)  # beaten by (20, 40)


def test_flat_metrics_add_ratios_to_the_reference():
    config = OptimizeConfig(objective="pydoc:perplexity", constraints=["ppl_ratio<=1.2", "decode_speedup>=2"])
    measured = {"decode_tok_s": 50.0, "peak_mb": 700.0, "size_mb": 90.0,
                "tasks": {"pydoc": {"perplexity": 24.0, "tokens": 100, "windows": 2, "seq_len": 64}}}
    reference = {"pydoc:perplexity": 20.0, "speed_decode_tok_s": 20.0}
    flat = flat_metrics(measured, config, reference)
    assert flat["ppl_ratio"] == flat["quality_ratio"] == 1.2 and flat["decode_speedup"] == 2.5
    assert "pydoc:windows" not in flat and "ppl_ratio" not in flat_metrics(measured, config, None)
    assert violations(flat, config.parsed_constraints()) == pytest.approx([0.0, -0.25])
    assert violations({}, config.parsed_constraints()) == [1.0, 1.0]  # not measured = not met
