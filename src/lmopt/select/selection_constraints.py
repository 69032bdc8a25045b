"""The measured metrics of `select`, constraints on them ("latency_p50_ms<=50,peak_mb<=800"), the Pareto
front and the best feasible candidate.

A constraint string is a comma-separated list of `METRIC OP NUMBER` with OP one of <=, >=, <, >. Parsing
fails with one line naming the bad constraint: unknown metric, bad syntax, a bound the metric can never
meet (accuracy>=1.2), or two bounds on one metric that no value meets together.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmopt.errors import LmoptError


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str
    """"max" (higher is better) or "min"."""
    lower: float
    upper: float
    description: str


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("accuracy", "max", 0.0, 1.0, "share of eval items classified right (classify)"),
    Metric("ref_nll", "min", 0.0, math.inf, "mean NLL per reference token of the eval outputs (generate, text2text)"),
    Metric("latency_p50_ms", "min", 0.0, math.inf, "median batch-1 latency of one request"),
    Metric("latency_p99_ms", "min", 0.0, math.inf, "99th percentile batch-1 latency of one request"),
    Metric("throughput_items_s", "max", 0.0, math.inf, "eval items per second, batched"),
    Metric("peak_mb", "min", 0.0, math.inf, "peak resident memory of the process while serving the candidate"),
    Metric("size_mb", "min", 0.0, math.inf, "weights in memory (parameters x bytes, head included)"),
    Metric("adapt_s", "min", 0.0, math.inf, "seconds spent adapting to the task (training; 0 for zero-shot)"),
    Metric("params_m", "min", 0.0, math.inf, "parameters in millions"),
]}

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    value: float
    text: str

    def holds(self, value: float | None) -> bool:
        return value is not None and OPERATORS[self.op](value, self.value)

    def violation(self, value: float | None) -> float:
        """0 when the constraint holds, else how far the value is from meeting it (inf when unmeasured)."""
        if value is None:
            return math.inf
        return 0.0 if self.holds(value) else abs(value - self.value)


def metric(name: str) -> Metric:
    if name not in METRICS:
        raise LmoptError(f"unknown metric '{name}' (choose {', '.join(METRICS)})")
    return METRICS[name]


def parse_constraint(text: str) -> Constraint:
    match = _PATTERN.match(text)
    if not match:
        raise LmoptError(f"constraint '{text.strip()}': expected METRIC<=NUMBER or METRIC>=NUMBER "
                         "(e.g. latency_p50_ms<=50)")
    name, op, raw = match.groups()
    if name not in METRICS:
        raise LmoptError(f"constraint '{text.strip()}': unknown metric '{name}' (choose {', '.join(METRICS)})")
    constraint = Constraint(name, op, float(raw), text.strip())
    info = METRICS[name]
    if op in (">=", ">") and (constraint.value > info.upper or (op == ">" and constraint.value >= info.upper)):
        raise LmoptError(f"constraint '{constraint.text}' can never hold: {name} is at most {info.upper:g}")
    if op in ("<=", "<") and (constraint.value < info.lower or (op == "<" and constraint.value <= info.lower)):
        raise LmoptError(f"constraint '{constraint.text}' can never hold: {name} is at least {info.lower:g}")
    return constraint


def parse_constraints(text: str | Sequence[str] | None) -> list[Constraint]:
    """`"a<=1,b>=2"` or `["a<=1", "b>=2"]` -> constraints; contradictory bounds on one metric fail."""
    items = [text] if isinstance(text, str) else list(text or [])
    parts = [part for item in items for part in item.split(",") if part.strip()]
    constraints = [parse_constraint(part) for part in parts]
    for low in constraints:
        for high in constraints:
            if low.metric != high.metric or low.op not in (">=", ">") or high.op not in ("<=", "<"):
                continue
            empty = low.value > high.value or (low.value == high.value and (low.op == ">" or high.op == "<"))
            if empty:
                raise LmoptError(f"constraints '{low.text}' and '{high.text}' can never hold together")
    return constraints


def feasible(row: dict[str, Any], constraints: Sequence[Constraint]) -> bool:
    return all(c.holds(row.get(c.metric)) for c in constraints)


def dominates(a: dict[str, Any], b: dict[str, Any], metrics: Sequence[str]) -> bool:
    """a is at least as good as b on every metric and better on one (directions from METRICS)."""
    better = False
    for name in metrics:
        sign = 1 if METRICS[name].direction == "max" else -1
        va, vb = sign * a[name], sign * b[name]
        if va < vb:
            return False
        better = better or va > vb
    return better


def pareto_front(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[int]:
    """Indices of the rows no other row dominates. Rows are swept best-first in lexicographic order of
    the metrics: a row that dominates another sorts before it, so each row need only be checked against
    the front kept so far. Rows missing a metric are left out."""
    for name in metrics:
        metric(name)
    usable = [i for i, row in enumerate(rows) if all(row.get(m) is not None for m in metrics)]
    order = sorted(usable, key=lambda i: tuple(
        (-1 if METRICS[m].direction == "max" else 1) * rows[i][m] for m in metrics))
    front: list[int] = []
    for i in order:
        if not any(dominates(rows[j], rows[i], metrics) for j in front):
            front.append(i)
    return sorted(front)


def best_feasible(rows: Sequence[dict[str, Any]], constraints: Sequence[Constraint], objective: str) -> int | None:
    """Index of the feasible row best on `objective` (ties: lower latency_p50_ms, then smaller size_mb)."""
    info = metric(objective)
    candidates = [i for i, row in enumerate(rows) if feasible(row, constraints) and row.get(objective) is not None]
    if not candidates:
        return None
    sign = -1 if info.direction == "max" else 1
    return min(candidates, key=lambda i: (sign * rows[i][objective], rows[i].get("latency_p50_ms") or 0.0,
                                          rows[i].get("size_mb") or 0.0))
