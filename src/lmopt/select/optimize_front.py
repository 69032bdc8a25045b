"""Judging measured candidates: flat metrics with ratios, constraint violations, the Pareto front, the best.

A point is non-dominated when no other point is at least as good on every objective and better on one.
`pareto_front` finds them for two objectives by sorting and one sweep (O(n log n)), for more by
comparing every pair; tests check both against brute force and against Optuna's own front.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmopt.select.optimize_config import Constraint, OptimizeConfig, task_metric

BOOKKEEPING = ("tokens", "windows", "seq_len", "n", "nll")
"""Task figures that say how much was measured, not how good the model is (left out of the metrics)."""
MACHINE_KEYS = ("decode_tok_s", "prefill_tok_s", "ttft_ms", "token_ms", "peak_mb", "size_mb", "params_m")


def flat_metrics(measured: dict[str, Any], config: OptimizeConfig,
                 reference: dict[str, Any] | None) -> dict[str, float]:
    """`{"wikitext2:perplexity": ..., "decode_tok_s": ..., "ppl_ratio": ...}` from one measurement.

    `reference` is the reference model's flat metrics at the same fidelity (None while measuring it)."""
    flat: dict[str, float] = {key: measured[key] for key in MACHINE_KEYS if measured.get(key) is not None}
    for task, figures in measured.get("tasks", {}).items():
        for name, value in figures.items():
            if name not in BOOKKEEPING and isinstance(value, int | float) and not isinstance(value, bool):
                flat[f"{task}:{name}"] = value
    if reference:
        objective = config.objective
        if objective in flat and reference.get(objective):
            flat["quality_ratio"] = round(flat[objective] / reference[objective], 5)
            parsed = task_metric(objective)
            if parsed is not None and parsed[1] == "perplexity":
                flat["ppl_ratio"] = flat["quality_ratio"]
        if "decode_tok_s" in flat and reference.get("speed_decode_tok_s"):
            flat["decode_speedup"] = round(flat["decode_tok_s"] / reference["speed_decode_tok_s"], 4)
    return flat


def violations(metrics: dict[str, float], constraints: Sequence[Constraint]) -> list[float]:
    """One number per constraint: <= 0 met, > 0 relative shortfall (a missing metric counts as 1)."""
    return [c.violation(metrics[c.metric]) if c.metric in metrics else 1.0 for c in constraints]


def is_feasible(violation: Sequence[float], margin: float = 0.0) -> bool:
    return all(v <= margin for v in violation)


def _as_minimized(point: Sequence[float], directions: Sequence[str]) -> tuple[float, ...]:
    return tuple(v if d == "minimize" else -v for v, d in zip(point, directions, strict=True))


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """`a` is at least as good as `b` on every objective and better on one."""
    ma, mb = _as_minimized(a, directions), _as_minimized(b, directions)
    return all(x <= y for x, y in zip(ma, mb, strict=True)) and ma != mb


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices (ascending) of the non-dominated points; equal points are all kept."""
    if len(directions) != 2:
        return [i for i, p in enumerate(points) if not any(dominates(q, p, directions) for q in points)]
    keyed = sorted((_as_minimized(p, directions), i) for i, p in enumerate(points))
    front: list[int] = []
    best_before = float("inf")  # least second objective among points with a smaller first objective
    start = 0
    while start < len(keyed):
        end = start
        while end < len(keyed) and keyed[end][0][0] == keyed[start][0][0]:
            end += 1
        group_best = keyed[start][0][1]  # the group is sorted by the second objective
        for (_, second), index in keyed[start:end]:
            if second == group_best and second < best_before:
                front.append(index)
        best_before = min(best_before, group_best)
        start = end
    return sorted(front)


def promising(estimate: Sequence[float], violation: Sequence[float], others: Sequence[tuple[Sequence[float],
              Sequence[float]]], directions: Sequence[str], margin: float) -> bool:
    """Worth a full measurement: within `margin` of every constraint and not dominated by another estimate
    that is itself within the margin (`others`: (values, violations) of the other finished trials)."""
    if not is_feasible(violation, margin):
        return False
    return not any(is_feasible(v, margin) and dominates(values, estimate, directions) for values, v in others)


def front_of(records: list[dict[str, Any]], config: OptimizeConfig) -> tuple[list[dict[str, Any]], bool]:
    """The front of the fully measured records: among the feasible ones when any is, else among all
    (the measured front that shows how close the search came). Returns (front, any feasible)."""
    measured = [r for r in records if r.get("full")]
    feasible = [r for r in measured if r["feasible"]]
    pool = feasible or measured
    values = [objective_values(r["full"], config) for r in pool]
    return [pool[i] for i in pareto_front(values, config.directions())], bool(feasible)


def objective_values(metrics: dict[str, float], config: OptimizeConfig) -> list[float]:
    return [metrics[config.objective], metrics["decode_tok_s"]]


def choose_best(records: list[dict[str, Any]], config: OptimizeConfig) -> dict[str, Any] | None:
    """The fully measured record with the best objective among the feasible ones (faster decode breaks a
    tie); with none feasible, the one with the least total constraint shortfall."""
    measured = [r for r in records if r.get("full")]
    if not measured:
        return None
    sign = 1 if config.directions()[0] == "minimize" else -1
    feasible = [r for r in measured if r["feasible"]]
    if feasible:
        return min(feasible, key=lambda r: (sign * r["full"][config.objective], -r["full"]["decode_tok_s"],
                                            r["number"]))
    return min(measured, key=lambda r: (sum(max(v, 0.0) for v in r["violations"]),
                                        sign * r["full"][config.objective], r["number"]))
