"""Read and process stages of the Ray engine (`ray_engine`): every document through `process_record`.

With at least as many shards as workers, one actor per worker reads and processes whole shards
(`_ReadAndProcess`): no record is pickled between stages, a worker's CPU slot covers its reading, and
an actor has its next shard queued when one ends (a task per shard left the cores 15% idle while the
driver scheduled the next one: BENCHMARKS.md, ninth session). With fewer shards (one csv, a `.gz`, a
small list) reading runs in tasks that take no CPU slot and the workers share its blocks.
Out of both comes one row per event in source order, with the columns in `COLUMNS`: `order` (shard
index << `ORDER_BITS` | event number), the source line, a bad row's reason, the filter verdict, the
report figures, the output row (JSON text, or pickled for in-memory output), exact key and signature.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np

from lmopt.data.clean import figures, process_record
from lmopt.data.config import CleanConfig
from lmopt.data.decontaminate import EvalIndex
from lmopt.data.load import Record
from lmopt.data.ray_read import Shard, shard_events
from lmopt.data.write import record_row

ORDER_BITS = 40  # order = shard index << 40 | event number in the shard: source order as one int64
COLUMNS = ("order", "line", "bad", "reason", "detail", "row", "snippet", "words_before", "words_after",
           "boilerplate", "normalized", "pii", "key", "sig")


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)  # not np.array: bytes would become fixed-width, nulls stripped
    out[:] = values
    return out


def _event_chunks(batch: dict[str, np.ndarray], shards: list[Shard], text_field: Any, chunk: int
                  ) -> Iterator[list[tuple[int, int, Record | str]]]:
    """The events of the batch's shards as (order, line, record or bad row's reason), `chunk` at a time."""
    for i in batch["shard"]:
        shard, events = shards[int(i)], []
        for seq, (line, value) in enumerate(shard_events(shard, text_field)):
            events.append(((shard.index << ORDER_BITS) + seq, line, value))
            if len(events) >= chunk:
                yield events
                events = []
        if events:
            yield events


def _read(batch: dict[str, np.ndarray], shards: list[Shard], text_field: Any, chunk: int
          ) -> Iterator[dict[str, np.ndarray]]:
    """Raw events of the batch's shards, `chunk` at a time: order, line, bad reason, pickled record."""
    for events in _event_chunks(batch, shards, text_field, chunk):
        cols: dict[str, list] = {"order": [], "line": [], "bad": [], "rec": []}
        for order, line, value in events:
            is_rec = isinstance(value, Record)
            cols["order"].append(order)
            cols["line"].append(line)
            cols["bad"].append("" if is_rec else value)
            cols["rec"].append(pickle.dumps((value.text, value.row, value.fields)) if is_rec else b"")
        yield _columns(cols)


def _columns(cols: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.int64) if isinstance(v[0], int | bool | np.integer) else _objects(v)
            for k, v in cols.items()}


def _process_batch(batch: dict[str, np.ndarray], config: dict[str, Any], index: Any,
                   as_json: bool) -> dict[str, np.ndarray]:
    """`process_record` on each raw record of a batch `_read` gave."""
    events = [(int(order), int(line), bad or Record(*_unpack(blob, int(line))))
              for order, line, bad, blob in zip(batch["order"], batch["line"], batch["bad"], batch["rec"],
                                                strict=True)]
    return _processed(events, CleanConfig.parse(config), _worker_index(index), as_json)


class _ReadAndProcess:
    """`_read` and `_process_batch` in one Ray actor, `chunk` events at a time: no record is pickled
    between them, a worker's CPU slot covers its reading too, and the actor, unlike a task per shard,
    has its next shard queued when one ends (no idle gap while the driver schedules)."""

    def __init__(self, shards: list[Shard], text_field: Any, chunk: int, config: dict[str, Any], index: Any,
                 as_json: bool) -> None:
        self.shards, self.text_field, self.chunk, self.as_json = shards, text_field, chunk, as_json
        self.cfg, self.index = CleanConfig.parse(config), _worker_index(index)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for events in _event_chunks(batch, self.shards, self.text_field, self.chunk):
            yield _processed(events, self.cfg, self.index, self.as_json)


def _processed(events: list[tuple[int, int, Record | str]], cfg: CleanConfig, index: EvalIndex | None,
               as_json: bool) -> dict[str, np.ndarray]:
    """The columns the later stages read, for events (order, line, a record or a bad row's reason)."""
    empty = {**dict.fromkeys(COLUMNS, ""), "row": "" if as_json else b"", "key": b"", "sig": b"",
             "words_before": 0, "words_after": 0, "boilerplate": 0, "normalized": False}
    cols: dict[str, list] = {k: [] for k in COLUMNS}
    for order, line, value in events:
        values = {**empty, "order": order, "line": line}
        if isinstance(value, Record):
            values.update(_document(value, cfg, index, as_json))
        else:
            values["bad"] = value
        for k in COLUMNS:
            cols[k].append(values[k])
    return _columns(cols) if cols["order"] else {}


_INDEX: dict[str, EvalIndex | None] = {}  # per worker process: the index of the run, fetched once


def _worker_index(ref: Any) -> EvalIndex | None:
    """The run's evaluation index, fetched from the object store once per worker process (its lookup
    tables are built on first use, so a fresh copy per batch would rebuild them every time)."""
    import ray  # lazy: optional dependency, present on Ray workers

    key = ref.hex()
    if key not in _INDEX:
        _INDEX.clear()
        _INDEX[key] = ray.get(ref)
    return _INDEX[key]


def _document(rec: Record, cfg: CleanConfig, index: EvalIndex | None, as_json: bool) -> dict[str, Any]:
    doc = process_record(rec, cfg, index)
    fig = figures(doc)
    values = {"reason": doc.reason or "", "detail": doc.detail or "", "snippet": fig.snippet,
              "words_before": fig.words_before, "words_after": fig.words_after, "boilerplate": fig.boilerplate,
              "normalized": fig.normalized, "pii": json.dumps(fig.pii) if fig.pii else "", "key": doc.key,
              "sig": doc.signature.tobytes() if doc.signature is not None else b""}
    if doc.reason is None or cfg.keep_removed:  # a removed row is written only with keep_removed
        row = record_row(doc.record)
        values["row"] = json.dumps(row, ensure_ascii=False, default=str) if as_json else pickle.dumps(row)
    return values


def _unpack(blob: bytes, line: int) -> tuple[str, int, dict[str, Any], tuple[str, ...]]:
    text, row, fields = pickle.loads(blob)
    return text, line, row, fields


def process(shards: list[Shard], cfg: CleanConfig, index: EvalIndex | None, workers: int, as_json: bool) -> Any:
    """The processed rows of `shards` as a lazy Ray Dataset (see the module docstring)."""
    import ray  # lazy: optional dependency
    import ray.data  # lazy: optional dependency

    ds = ray.data.from_items([{"shard": s.index} for s in shards], override_num_blocks=len(shards))
    index_ref = ray.put(index)  # one copy in the object store, read by every task
    if len(shards) >= workers:  # every worker gets whole shards: read and process in one actor each
        return ds.map_batches(_ReadAndProcess, batch_size=1, num_cpus=1, concurrency=workers,
                              fn_constructor_args=(shards, cfg.text_field, cfg.chunk_size, cfg.to_dict(),
                                                   index_ref, as_json))
    # Fewer shards than workers (one csv, a .gz, a small list): reading takes no CPU slot, so it is not
    # fused with the processing, whose tasks then share the blocks of the one shard.
    ds = ds.map_batches(_read, batch_size=1, fn_args=(shards, cfg.text_field, cfg.chunk_size),
                        num_cpus=0, concurrency=min(workers, len(shards)))
    return ds.map_batches(_process_batch, batch_size=cfg.chunk_size, batch_format="numpy",
                          fn_args=(cfg.to_dict(), index_ref, as_json), num_cpus=1, concurrency=workers)
