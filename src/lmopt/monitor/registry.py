"""The run registry: every evaluation, benchmark and step result, in SQLite or any SQLAlchemy URL.

One table, `runs`: what was measured (kind, task), on which model (reference and content hash),
with which config, on which machine, when, and the figures (JSON). A team points every member at the
same database with `--registry postgresql://...`.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from lmopt.settings import lmopt_home


def default_url() -> str:
    return f"sqlite:///{lmopt_home() / 'registry.db'}"


class Registry:
    """Append-only store of runs. `Registry()` uses `$LMOPT_HOME/registry.db`."""

    def __init__(self, url: str | None = None) -> None:
        import sqlalchemy as sa

        self.url = url or default_url()
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(self.url)
        meta = sa.MetaData()
        self.runs = sa.Table(
            "runs", meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("time", sa.Float, nullable=False),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("model", sa.String(512)),
            sa.Column("model_hash", sa.String(64)),
            sa.Column("task", sa.String(128)),
            sa.Column("metrics", sa.Text),
            sa.Column("config", sa.Text),
            sa.Column("machine", sa.Text),
        )
        meta.create_all(self.engine)

    def record(self, kind: str, model: str | None, metrics: dict[str, Any], *, task: str | None = None,
               model_hash: str | None = None, config: dict[str, Any] | None = None,
               machine: dict[str, Any] | None = None) -> int:
        """Append one run and return its id."""
        row = {"time": time.time(), "kind": kind, "model": model, "model_hash": model_hash, "task": task,
               "metrics": json.dumps(metrics, default=str), "config": json.dumps(config or {}, default=str),
               "machine": json.dumps(machine or machine_summary(), default=str)}
        with self.engine.begin() as conn:
            return conn.execute(self.runs.insert().values(**row)).inserted_primary_key[0]

    def query(self, kind: str | None = None, model: str | None = None, task: str | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
        """Most recent runs first, optionally filtered."""
        import sqlalchemy as sa

        stmt = sa.select(self.runs).order_by(self.runs.c.id.desc()).limit(limit)
        for column, value in (("kind", kind), ("model", model), ("task", task)):
            if value is not None:
                stmt = stmt.where(self.runs.c[column] == value)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
        for row in rows:
            for key in ("metrics", "config", "machine"):
                row[key] = json.loads(row[key] or "{}")
        return rows


def machine_summary() -> dict[str, Any]:
    """A short description of this machine for the registry (no bandwidth measurement)."""
    from lmopt.hardware import detect_hardware

    hw = detect_hardware()
    return {"host": platform.node(), "cpu": hw.cpu, "cores": hw.physical_cores, "device": hw.device,
            "dtype": hw.dtype, "threads": hw.threads, "gpus": [g["name"] for g in hw.gpus]}


class NullRegistry:
    """Do-nothing registry for library use and tests that should not write anywhere."""

    url = "null"

    def record(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def query(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []
