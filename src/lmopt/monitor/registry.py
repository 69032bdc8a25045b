"""The registry: every run, every registered model and every alias change, in SQLite or any SQLAlchemy URL.

Three tables:
- `runs`: what was measured (kind, task), on which model (reference and content hash), with which
  config, on which machine, when, and the figures (JSON). Append-only.
- `models`: one row per model content hash: where it was last seen and its lineage from the card
  (parent, parent hash, step, config, data hashes).
- `model_figures`: figures measured on a model, appended (never updated in place, so concurrent
  writers lose nothing); a model's figures are its rows merged oldest to newest.
- `alias_events`: every promotion and rollback of a named alias (`production`, `candidate`, ...):
  who, when, from which hash to which. An alias's current target is its latest event; nothing is
  ever overwritten, so the history is the table.

A team points every member at the same database with `--registry postgresql://...` or the
`LMOPT_REGISTRY` environment variable.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmopt.database import create_checked_engine, database_url
from lmopt.settings import lmopt_home

REGISTRY_ENV = "LMOPT_REGISTRY"


def default_url() -> str:
    """`$LMOPT_REGISTRY` when set, else SQLite at `$LMOPT_HOME/registry.db`."""
    return os.environ.get(REGISTRY_ENV) or f"sqlite:///{lmopt_home() / 'registry.db'}"


def _json(value: Any) -> str:
    return json.dumps(value if value is not None else {}, default=str)


class Registry:
    """Store of runs, models and alias events. `Registry()` uses `default_url()`."""

    def __init__(self, url: str | None = None) -> None:
        import sqlalchemy as sa

        self.url = url or default_url()
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # SQLite waits for a writer holding the lock (two processes promoting at once) instead of failing.
        connect_args = {"timeout": 30} if self.url.startswith("sqlite") else {}
        self.engine = create_checked_engine(self.url, "registry", connect_args=connect_args)
        self.url = database_url(self.url)
        meta = sa.MetaData()
        self.runs = sa.Table(
            "runs", meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("time", sa.Float, nullable=False),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("model", sa.String(512)),
            sa.Column("model_hash", sa.String(64), index=True),
            sa.Column("task", sa.String(128)),
            sa.Column("metrics", sa.Text),
            sa.Column("config", sa.Text),
            sa.Column("machine", sa.Text),
        )
        self.models = sa.Table(
            "models", meta,
            sa.Column("hash", sa.String(64), primary_key=True),
            sa.Column("name", sa.String(256)),
            sa.Column("path", sa.String(1024)),
            sa.Column("registered", sa.Float, nullable=False),
            sa.Column("updated", sa.Float, nullable=False),
            sa.Column("parent", sa.String(1024)),
            sa.Column("parent_hash", sa.String(64)),
            sa.Column("step", sa.String(64)),
            sa.Column("format", sa.String(64)),
            sa.Column("lineage", sa.Text),
        )
        self.model_figures = sa.Table(
            "model_figures", meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("hash", sa.String(64), nullable=False, index=True),
            sa.Column("time", sa.Float, nullable=False),
            sa.Column("figures", sa.Text),
        )
        self.alias_events = sa.Table(
            "alias_events", meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("time", sa.Float, nullable=False),
            sa.Column("alias", sa.String(128), nullable=False, index=True),
            sa.Column("action", sa.String(16), nullable=False),
            sa.Column("model_hash", sa.String(64)),
            sa.Column("previous_hash", sa.String(64)),
            sa.Column("user", sa.String(128)),
            sa.Column("reason", sa.Text),
        )
        _retry(lambda: meta.create_all(self.engine), sa.exc.DBAPIError)

    # --- runs ---------------------------------------------------------------------------------------

    def record(self, kind: str, model: str | None, metrics: dict[str, Any], *, task: str | None = None,
               model_hash: str | None = None, config: dict[str, Any] | None = None,
               machine: dict[str, Any] | None = None) -> int:
        """Append one run and return its id."""
        row = {"time": time.time(), "kind": kind, "model": model, "model_hash": model_hash, "task": task,
               "metrics": _json(metrics), "config": _json(config),
               "machine": _json(machine or machine_summary())}
        with self.engine.begin() as conn:
            return conn.execute(self.runs.insert().values(**row)).inserted_primary_key[0]

    def register_model(self, path: str | Path, figures: dict[str, Any] | None = None) -> str:
        """Register the model saved at `path` (content hash, lineage, figures); returns its hash."""
        from lmopt.monitor.models import register_model  # lazy: monitor.models imports this module

        return register_model(path, self, figures=figures).hash

    def query(self, kind: str | None = None, model: str | None = None, task: str | None = None,
              limit: int = 50, model_hash: str | None = None) -> list[dict[str, Any]]:
        """Most recent runs first, optionally filtered."""
        import sqlalchemy as sa

        stmt = sa.select(self.runs).order_by(self.runs.c.id.desc()).limit(limit)
        for column, value in (("kind", kind), ("model", model), ("task", task), ("model_hash", model_hash)):
            if value is not None:
                stmt = stmt.where(self.runs.c[column] == value)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
        for row in rows:
            for key in ("metrics", "config", "machine"):
                row[key] = json.loads(row[key] or "{}")
        return rows

    # --- models -------------------------------------------------------------------------------------

    def upsert_model(self, row: dict[str, Any]) -> None:
        """Insert a model row, or update the one with the same hash; `row["figures"]` are appended.

        Only the columns given are written on update, so a caller can add figures alone.
        """
        import sqlalchemy as sa

        now = time.time()
        figures = row.get("figures")
        values = {k: v for k, v in row.items() if k != "figures" and k in self.models.c}
        if "lineage" in values:
            values["lineage"] = _json(values["lineage"])
        where = self.models.c.hash == row["hash"]
        with self.engine.begin() as conn:
            known = conn.execute(sa.select(self.models.c.hash).where(where)).first() is not None
            if known:
                conn.execute(self.models.update().where(where).values(**values, updated=now))
        if not known:
            try:
                with self.engine.begin() as conn:
                    conn.execute(self.models.insert().values(**values, registered=now, updated=now))
            except sa.exc.IntegrityError:  # a concurrent writer inserted the same hash first
                with self.engine.begin() as conn:
                    conn.execute(self.models.update().where(where).values(**values, updated=now))
        if figures:
            with self.engine.begin() as conn:
                conn.execute(self.model_figures.insert().values(hash=row["hash"], time=now,
                                                                figures=_json(figures)))

    def model_rows(self, hash_prefix: str | None = None) -> list[dict[str, Any]]:
        """Registered models (newest first), optionally those whose hash starts with `hash_prefix`."""
        import sqlalchemy as sa

        stmt = sa.select(self.models).order_by(self.models.c.registered.desc())
        if hash_prefix is not None:
            stmt = stmt.where(self.models.c.hash.startswith(hash_prefix, autoescape=True))
        figures = sa.select(self.model_figures).order_by(self.model_figures.c.id)
        if hash_prefix is not None:
            figures = figures.where(self.model_figures.c.hash.startswith(hash_prefix, autoescape=True))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
            merged: dict[str, dict[str, Any]] = {}
            for fig in conn.execute(figures):
                merged.setdefault(fig.hash, {}).update(json.loads(fig.figures or "{}"))
        for row in rows:
            row["lineage"] = json.loads(row["lineage"] or "{}")
            row["figures"] = merged.get(row["hash"], {})
        return rows

    # --- aliases ------------------------------------------------------------------------------------

    def add_alias_event(self, alias: str, action: str, model_hash: str | None, previous_hash: str | None,
                        user: str | None, reason: str | None = None) -> int:
        row = {"time": time.time(), "alias": alias, "action": action, "model_hash": model_hash,
               "previous_hash": previous_hash, "user": user, "reason": reason}
        with self.engine.begin() as conn:
            return conn.execute(self.alias_events.insert().values(**row)).inserted_primary_key[0]

    def alias_events_of(self, alias: str | None = None) -> list[dict[str, Any]]:
        """Alias events in the order they happened (all aliases, or one)."""
        import sqlalchemy as sa

        stmt = sa.select(self.alias_events).order_by(self.alias_events.c.id)
        if alias is not None:
            stmt = stmt.where(self.alias_events.c.alias == alias)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]


def _retry(action: Callable[[], Any], errors: type[BaseException] | tuple, attempts: int = 5) -> Any:
    """Run `action`, retrying on `errors`: several processes creating a fresh database's tables at
    once collide on some servers (PostgreSQL's catalog); the loser finds the tables on its retry."""
    for attempt in range(attempts):
        try:
            return action()
        except errors:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    return None


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
