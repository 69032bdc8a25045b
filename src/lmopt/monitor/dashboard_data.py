"""What the dashboard shows, read from the registry, the traffic store and a server's /metrics, and its plots.

Every function returns plain data (dicts, lists) so the page and `/api/summary` show the same thing;
plots are PNG bytes drawn with matplotlib's object API (no pyplot state, safe in server threads).
"""

from __future__ import annotations

import datetime
import io
import re
import time
from typing import Any

from lmopt.monitor.lineage import lineage
from lmopt.monitor.models import alias_history, list_models
from lmopt.monitor.registry import Registry
from lmopt.monitor.traffic import TrafficStore

MAIN_FIGURES = ("acc", "acc_norm", "exact_match", "perplexity", "candidate")
PROM_LINE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def models_view(registry: Registry) -> list[dict[str, Any]]:
    """Registered models, newest first, each with its lineage as a list of (hash, step)."""
    out = []
    for m in list_models(registry):
        chain = lineage(m.hash, registry)
        out.append({"hash": m.hash, "name": m.name, "aliases": m.aliases, "step": m.step, "path": m.path,
                    "registered": m.registered, "lineage": [{"hash": r.hash, "step": r.step} for r in chain]})
    return out


def alias_view(registry: Registry) -> list[dict[str, Any]]:
    """Every alias move, newest first."""
    return [vars(e) for e in reversed(alias_history(None, registry))]


def _main_value(figures: dict[str, Any]) -> tuple[str, float] | None:
    for key in MAIN_FIGURES:
        if isinstance(figures.get(key), int | float) and not isinstance(figures.get(key), bool):
            return key, float(figures[key])
    return None


def trends(registry: Registry, limit: int = 2000) -> dict[str, list[dict[str, Any]]]:
    """Series per task/metric over time: evaluation figures and gate-measured candidate values."""
    series: dict[str, list[dict[str, Any]]] = {}
    for kind in ("evaluate", "gate-metric"):
        for row in registry.query(kind=kind, limit=limit):
            main = _main_value(row["metrics"])
            if main is None or not row["task"]:
                continue
            name = f"{row['task']} ({main[0]})" if kind == "evaluate" else f"gate {row['task']}"
            series.setdefault(name, []).append({"time": row["time"], "value": main[1], "model": row["model_hash"]})
    return {k: sorted(v, key=lambda p: p["time"]) for k, v in sorted(series.items())}


def gates(registry: Registry, limit: int = 20) -> list[dict[str, Any]]:
    """The latest gate runs: candidate, baseline, verdict and failed metrics."""
    out = []
    for row in registry.query(kind="gate", limit=limit):
        report = row["metrics"].get("report", {})
        out.append({"id": row["id"], "time": row["time"], "suite": row["task"], "candidate": row["model"],
                    "candidate_hash": row["model_hash"], "baseline": row["config"].get("baseline"),
                    "passed": row["metrics"].get("passed"), "failed": row["metrics"].get("failed", []),
                    "seconds": row["metrics"].get("seconds"), "metrics": len(report.get("metrics", []))})
    return out


def improve_runs(registry: Registry, limit: int = 20) -> list[dict[str, Any]]:
    return [{"time": r["time"], "model": r["model_hash"], "promoted": r["metrics"].get("promoted"),
             "reason": r["metrics"].get("reason"), "feedback": r["metrics"].get("feedback", {})}
            for r in registry.query(kind="improve", limit=limit)]


def drift_view(registry: Registry, limit: int = 500) -> dict[str, Any]:
    """Drift figures over time per metric, and the latest check's metrics with their thresholds."""
    rows = registry.query(kind="drift", limit=limit)[::-1]
    series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        for name, value in row["metrics"].items():
            if isinstance(value, int | float) and name != "n_current":
                series.setdefault(name, []).append({"time": row["time"], "value": float(value)})
    latest = rows[-1]["config"].get("report", {}) if rows else {}
    return {"series": series, "latest": latest.get("metrics", []), "alerts": latest.get("alerts", []),
            "time": rows[-1]["time"] if rows else None}


def feedback_view(store: TrafficStore | None, examples: int = 5, days: float = 30) -> dict[str, Any]:
    """Feedback counts by rating sign and per day, with the latest rated responses as examples."""
    if store is None:
        return {"enabled": False}
    rated = store.rated(since=time.time() - days * 86400)
    counts = {"positive": 0, "negative": 0, "neutral": 0, "corrections": 0}
    per_day: dict[str, dict[str, int]] = {}
    for r in rated:
        sign = "positive" if r["rating"] > 0 else "negative" if r["rating"] < 0 else "neutral"
        counts[sign] += 1
        counts["corrections"] += int(bool(r.get("correction")))
        day = time.strftime("%Y-%m-%d", time.localtime(r["rated"]))
        per_day.setdefault(day, {"positive": 0, "negative": 0, "neutral": 0})[sign] += 1

    def pick(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: r.get(k) for k in ("response_id", "rating", "prompt", "response", "correction", "comment")}
                for r in rows[::-1][:examples]]

    return {"enabled": True, "requests": store.count(), "counts": counts, "per_day": per_day,
            "negative": pick([r for r in rated if r["rating"] < 0]),
            "positive": pick([r for r in rated if r["rating"] > 0])}


def scrape_metrics(url: str | None, timeout: float = 3.0) -> dict[str, Any]:
    """The lmopt_* series of a server's Prometheus /metrics: {"series": {name{labels}: value}} or an error."""
    if not url:
        return {"enabled": False}
    import httpx  # lazy: only when a server is watched

    try:
        text = httpx.get(url, timeout=timeout).raise_for_status().text
    except httpx.HTTPError as exc:
        return {"enabled": True, "url": url, "error": f"{type(exc).__name__}: {exc}"}
    series = {}
    for line in text.splitlines():
        match = PROM_LINE.match(line)
        if match and match.group(1).startswith("lmopt_") and not match.group(1).endswith("_bucket"):
            try:
                series[match.group(1) + (match.group(2) or "")] = float(match.group(3))
            except ValueError:
                continue
    return {"enabled": True, "url": url, "series": series}


def line_plot(series: dict[str, list[dict[str, Any]]], title: str, thresholds: dict[str, float] | None = None,
              max_panels: int = 12) -> bytes:
    """One small panel per series (value over time), as PNG; a dashed line marks a threshold."""
    import matplotlib.dates as mdates  # lazy: ~0.5 s, only when a plot is drawn
    from matplotlib.figure import Figure

    names = list(series)[:max_panels] or ["(no data yet)"]
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 2.6 * rows), layout="constrained")
    fig.suptitle(title)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = series.get(name, [])
        if points:
            when = [datetime.datetime.fromtimestamp(p["time"]) for p in points]
            ax.plot(when, [p["value"] for p in points], marker="o", ms=3)
            locator = mdates.AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
            ax.tick_params(axis="x", labelsize=7)
        if thresholds and thresholds.get(name) is not None:
            ax.axhline(thresholds[name], color="tab:red", ls="--", lw=1)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def feedback_plot(per_day: dict[str, dict[str, int]]) -> bytes:
    """Stacked bars of feedback per day by rating sign, as PNG."""
    from matplotlib.figure import Figure  # lazy: as above

    fig = Figure(figsize=(6, 2.6), layout="constrained")
    ax = fig.add_subplot()
    days = sorted(per_day) or ["(none)"]
    bottom = [0] * len(days)
    for sign, color in (("positive", "tab:green"), ("neutral", "tab:gray"), ("negative", "tab:red")):
        values = [per_day.get(d, {}).get(sign, 0) for d in days]
        ax.bar(days, values, bottom=bottom, color=color, label=sign)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("feedback per day")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()
