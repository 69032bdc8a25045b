"""The traffic store: served requests and user feedback, in SQLite (default) or any SQLAlchemy URL.

    store = TrafficStore()                        # $LMOPT_TRAFFIC, else $LMOPT_HOME/traffic.db
    serve(model, engine_config, server_config, traffic=store, sample_rate=0.1)
    store.requests(since=time.time() - 3600)      # what drift checks and `lmopt improve` read

It is the server's `lmopt.serve.telemetry.TrafficSink`. `record()` puts a record in a bounded queue and
returns at once (False when the queue is full: the record is dropped, and the server counts the drop);
one writer thread drains the queue in batches, scrubs PII with `lmopt.data.pii.scrub_pii` (unless
`scrub_pii=False`) and inserts, then applies the retention limit. Feedback is written at once (the
server calls `add_feedback` off its event loop) and scrubbed the same way.

Tables:
- `traffic`: one row per recorded request (prompt, chat messages as JSON, response, token counts,
  finish reason, time to first token, latency, model name and content hash, response id, PII found).
- `feedback`: one row per rating (response id, rating -1..1, corrected answer, comment).
Retention: `max_rows` keeps the newest requests; `max_days` drops requests and feedback older than that.
Feedback outlives its request under `max_rows` (it is small, and it is the improvement loop's data).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from lmopt.data.pii import scrub_pii
from lmopt.database import create_checked_engine
from lmopt.errors import LmoptError
from lmopt.serve.telemetry import FeedbackRecord, TrafficRecord
from lmopt.settings import lmopt_home

TRAFFIC_ENV = "LMOPT_TRAFFIC"
log = logging.getLogger("lmopt.monitor")
_STOP = object()  # tells the writer thread to finish


def default_url() -> str:
    """`$LMOPT_TRAFFIC` when set, else SQLite at `$LMOPT_HOME/traffic.db`."""
    return os.environ.get(TRAFFIC_ENV) or f"sqlite:///{lmopt_home() / 'traffic.db'}"


class TrafficStore:
    """Recorded requests and feedback (see the module docstring)."""

    def __init__(self, url: str | None = None, *, scrub_pii: bool = True, max_rows: int | None = None,
                 max_days: float | None = None, queue_size: int = 10_000, batch_size: int = 256) -> None:
        if max_rows is not None and max_rows < 1:
            raise LmoptError(f"traffic store: max_rows must be at least 1, got {max_rows}")
        if max_days is not None and max_days <= 0:
            raise LmoptError(f"traffic store: max_days must be positive, got {max_days}")
        if queue_size < 1 or batch_size < 1:
            raise LmoptError("traffic store: queue_size and batch_size must be at least 1")
        self.url = url or default_url()
        self.scrub, self.max_rows, self.max_days, self.batch_size = scrub_pii, max_rows, max_days, batch_size
        self.engine = _open(self.url)
        self.traffic, self.feedback_table = _tables(sa.MetaData(), self.engine)
        self.dropped = self.written = self.failed = 0
        self._db = threading.Lock()  # one writer at a time (SQLite), and a shared in-memory connection
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self.enforce_retention()
        self._writer = threading.Thread(target=self._drain, name="lmopt-traffic-writer", daemon=True)
        self._writer.start()

    # ---- the sink (called by the server) ----
    def record(self, record: TrafficRecord) -> bool:
        """Queue one record; never blocks. False when it was dropped (queue full, or store closed)."""
        if self._closed:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def add_feedback(self, feedback: FeedbackRecord, issued: bool = False) -> bool:
        """Store feedback; False (nothing stored) when the response id was neither issued nor recorded."""
        row = {"response_id": feedback.response_id, "created": feedback.created, "rating": feedback.rating,
               "correction": self._clean(feedback.correction, {}), "comment": self._clean(feedback.comment, {})}
        with self._db, self.engine.begin() as conn:
            if not issued and not self._has_response(conn, feedback.response_id):
                return False
            conn.execute(self.feedback_table.insert().values(**row))
        return True

    def failed_writes(self) -> int:
        return self.failed

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the writer; the store can still be read."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:  # the database has hung for the whole timeout: leave the daemon writer to it
            log.warning("traffic store: the writer is stuck; %d queued records not written",
                        self._queue.qsize())
            return
        self._writer.join(timeout)

    # ---- the writer thread ----
    def _drain(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not _STOP]
            if records:
                self._write(records)
            for _ in batch:
                self._queue.task_done()
            if len(records) < len(batch):
                return

    def _write(self, records: list[TrafficRecord]) -> None:
        try:
            rows = [self._row(r) for r in records]
            with self._db, self.engine.begin() as conn:
                conn.execute(self.traffic.insert(), rows)
                self._retain(conn)
            self.written += len(rows)
        except Exception:  # a database error must not stop the writer; the records are counted as lost
            log.exception("traffic store: writing %d records failed", len(records))
            self.failed += len(records)

    def _row(self, record: TrafficRecord) -> dict[str, Any]:
        row = asdict(record)
        found: dict[str, int] = {}
        row["prompt"] = self._clean(record.prompt, found)
        row["response"] = self._clean(record.response, found)
        if record.messages is not None:
            messages = [{**m, "content": self._clean(m.get("content"), found)} for m in record.messages]
            row["messages"] = json.dumps(messages, ensure_ascii=False)
        row["pii"] = json.dumps(found) if found else None
        return row

    def _clean(self, text: str | None, found: dict[str, int]) -> str | None:
        if text is None or not self.scrub:
            return text
        clean, counts = scrub_pii(text)
        for kind, n in counts.items():
            found[kind] = found.get(kind, 0) + n
        return clean

    # ---- retention ----
    def enforce_retention(self) -> None:
        """Apply `max_rows` and `max_days` now (the writer also does after each batch)."""
        with self._db, self.engine.begin() as conn:
            self._retain(conn)

    def _retain(self, conn: Any) -> None:
        t, f = self.traffic, self.feedback_table
        if self.max_days is not None:
            cutoff = time.time() - self.max_days * 86400
            conn.execute(t.delete().where(t.c.created < cutoff))
            conn.execute(f.delete().where(f.c.created < cutoff))
        if self.max_rows is not None:
            oldest_kept = conn.execute(sa.select(t.c.id).order_by(t.c.id.desc())
                                       .offset(self.max_rows - 1).limit(1)).scalar()
            if oldest_kept is not None:
                conn.execute(t.delete().where(t.c.id < oldest_kept))

    # ---- reading ----
    def requests(self, since: float | None = None, until: float | None = None,
                 model_hash: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
        """Recorded requests, oldest first; `last` keeps only the most recent that many."""
        t = self.traffic
        stmt = sa.select(t).order_by(t.c.id.desc())
        stmt = _window(stmt, t.c.created, since, until)
        if model_hash is not None:
            stmt = stmt.where(t.c.model_hash == model_hash)
        if last is not None:
            stmt = stmt.limit(last)
        rows = self._read(stmt)
        for row in rows:
            row["messages"] = json.loads(row["messages"]) if row["messages"] else None
            row["pii"] = json.loads(row["pii"]) if row["pii"] else {}
        return rows[::-1]

    def feedback(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """Feedback rows, oldest first."""
        f = self.feedback_table
        return self._read(_window(sa.select(f).order_by(f.c.id), f.c.created, since, until))

    def rated(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """Recorded requests that got feedback, one row per rating: the request's fields plus
        `rating`, `correction`, `comment` and `rated` (when the feedback came), oldest rating first."""
        t, f = self.traffic, self.feedback_table
        stmt = (sa.select(t, f.c.rating, f.c.correction, f.c.comment, f.c.created.label("rated"))
                .join(f, f.c.response_id == t.c.response_id).order_by(f.c.id))
        rows = self._read(_window(stmt, f.c.created, since, until))
        for row in rows:
            row["messages"] = json.loads(row["messages"]) if row["messages"] else None
        return rows

    def count(self) -> int:
        """Recorded requests in the store."""
        return self._read(sa.select(sa.func.count().label("n")).select_from(self.traffic))[0]["n"]

    def _read(self, stmt: Any) -> list[dict[str, Any]]:
        with self._db, self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def _has_response(self, conn: Any, response_id: str) -> bool:
        t = self.traffic
        return conn.execute(sa.select(t.c.id).where(t.c.response_id == response_id).limit(1)).first() is not None


def _window(stmt: Any, column: Any, since: float | None, until: float | None) -> Any:
    if since is not None:
        stmt = stmt.where(column >= since)
    if until is not None:
        stmt = stmt.where(column < until)
    return stmt


def _open(url: str) -> Any:
    """The SQLAlchemy engine; SQLite gets a busy timeout and WAL (readers do not wait for the writer)."""
    if not url.startswith("sqlite"):
        return create_checked_engine(url, "traffic store")
    if url in ("sqlite://", "sqlite:///:memory:"):  # one connection shared by the threads
        return create_checked_engine(url, "traffic store", poolclass=sa.pool.StaticPool,
                                     connect_args={"check_same_thread": False})
    Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_checked_engine(url, "traffic store", connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _wal(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return engine


def _tables(meta: sa.MetaData, engine: Any) -> tuple[sa.Table, sa.Table]:
    traffic = sa.Table(
        "traffic", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("response_id", sa.String(64), nullable=False, unique=True),
        sa.Column("created", sa.Float, nullable=False, index=True),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("model", sa.String(256)),
        sa.Column("model_hash", sa.String(64), index=True),
        sa.Column("prompt", sa.Text),
        sa.Column("messages", sa.Text),
        sa.Column("response", sa.Text),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("finish_reason", sa.String(16)),
        sa.Column("stream", sa.Boolean),
        sa.Column("ttft_s", sa.Float),
        sa.Column("latency_s", sa.Float),
        sa.Column("pii", sa.Text),
    )
    feedback = sa.Table(
        "feedback", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("response_id", sa.String(128), nullable=False, index=True),
        sa.Column("created", sa.Float, nullable=False, index=True),
        sa.Column("rating", sa.Float, nullable=False),
        sa.Column("correction", sa.Text),
        sa.Column("comment", sa.Text),
    )
    meta.create_all(engine)
    return traffic, feedback
