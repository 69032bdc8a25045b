"""Input shards for the Ray engine, read with the line numbers and bad rows the local reader gives.

A source is cut into shards that Ray tasks read in parallel:
- jsonl (uncompressed): byte ranges cut just after a newline. A first pass counts each range's line
  breaks as text mode does (`\\n`, `\\r\\n` and a lone `\\r`), so every shard knows its first line number.
- parquet: one shard per row group; row numbers continue across shards.
- anything else (csv, json, txt, `.gz`, HF datasets): one shard. The per-document work after it still
  spreads over every worker; only the parsing is serial.
- an in-memory iterable: read here, into shards of `ITEMS_PER_SHARD` rows put in the object store.
A shard yields events in order: `(line, Record)` for a record, `(line, reason)` for a bad row.
Text fields are guessed as `open_records` guesses them, from the first good row of the source: a shard
starting after that row is given the guess, one starting before it guesses the same way itself.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmopt.data.clean import as_records
from lmopt.data.load import Record, RecordStream, open_records

MIN_SHARD_BYTES = 16 * 1024
MAX_SHARD_BYTES = 64 * 1024 * 1024
SHARDS_PER_WORKER = 16  # the last shards to finish leave at most 1/16 of a worker's share idle
LOCAL_COUNT_BYTES = 1 << 30
ITEMS_PER_SHARD = 4096
Event = tuple[int, "Record | str"]


@dataclass(frozen=True)
class Shard:
    """One unit of reading: a byte range, some row groups, a whole source, or a list of items."""

    index: int
    path: str | None = None
    format: str | None = None
    byte_range: tuple[int, int] | None = None
    row_groups: tuple[int, ...] | None = None
    first_line: int = 1
    fields: tuple[str, ...] | None = None
    """Text fields guessed from an earlier shard's row (None: this shard guesses, or they are given)."""
    items: Any = None
    """For in-memory input: an ObjectRef of the shard's events."""


class _Pending:
    """Stands in for a stream's `BadRows`: collects bad rows, with the shard's line offset, in order."""

    def __init__(self, offset: int) -> None:
        self.offset, self.rows = offset, []

    def add(self, line: int, reason: str) -> None:
        self.rows.append((line + self.offset, reason))

    def drain(self) -> list[tuple[int, str]]:
        rows, self.rows = self.rows, []
        return rows


class _ByteRange(io.RawIOBase):
    """Bytes `start` to `end` of a file, as a raw stream (for a text wrapper)."""

    def __init__(self, path: str, start: int, end: int) -> None:
        self.fh, self.left = open(path, "rb"), end - start  # noqa: SIM115 (closed with the wrapper)
        self.fh.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.fh.readinto(memoryview(buffer)[: min(len(buffer), self.left)])
        self.left -= n
        return n

    def close(self) -> None:
        self.fh.close()
        super().close()


class _ShardStream(RecordStream):
    """`RecordStream` over one shard: the same parsing and bad-row rules, on a byte range or row groups."""

    def __init__(self, shard: Shard, text_field: Any) -> None:
        super().__init__(shard.path, text_field=text_field, format=shard.format)
        self.shard = shard
        if shard.fields is not None and not self.explicit:
            self.fields = list(shard.fields)
        self.bad = _Pending(shard.first_line - 1)

    def _open(self) -> io.TextIOBase:
        if self.shard.byte_range is None:
            return super()._open()
        raw = _ByteRange(self.path, *self.shard.byte_range)
        return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="surrogateescape", newline="")

    def _parquet(self) -> Iterator[tuple[int, Any]]:
        if self.shard.row_groups is None:
            yield from super()._parquet()
            return
        import pyarrow.parquet as pq  # lazy: as in load.py

        n = 0
        batches = pq.ParquetFile(self.path).iter_batches(batch_size=1024, row_groups=list(self.shard.row_groups))
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield n, row


def shard_events(shard: Shard, text_field: Any) -> Iterator[Event]:
    """The events of `shard` in source order (see the module docstring)."""
    if shard.items is not None:
        import ray  # lazy: optional dependency, present on Ray workers

        yield from ray.get(shard.items)
        return
    stream = _ShardStream(shard, text_field)
    offset = shard.first_line - 1
    for rec in stream:
        yield from stream.bad.drain()
        rec.line += offset
        yield rec.line, rec
    yield from stream.bad.drain()


def count_line_breaks(path: str, start: int, end: int) -> int:
    """Lines text mode ends in bytes `start`..`end` (a range that starts after a newline)."""
    count, tail = 0, b""
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            block = fh.read(min(left, 1 << 24))
            left -= len(block)
            count += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
            if tail == b"\r" and block.startswith(b"\n"):
                count -= 1  # a \r\n split across two reads was counted twice
            tail = block[-1:]
    return count


def _cut_points(path: str, shards: int) -> list[int]:
    """Byte offsets just after a newline near each 1/shards of the file (0 and the size included)."""
    size = os.path.getsize(path)
    points = [0]
    with open(path, "rb") as fh:
        for k in range(1, shards):
            fh.seek(max(points[-1], size * k // shards))
            fh.readline()
            if fh.tell() < size and fh.tell() > points[-1]:
                points.append(fh.tell())
    return points + [size]


def plan_shards(data: str | Path | Iterable[Any], text_field: Any, workers: int) -> list[Shard]:
    """The shards of `data` for `workers` workers (Ray must be initialized for in-memory input and for
    jsonl files over `LOCAL_COUNT_BYTES`, whose lines are counted in tasks)."""
    if not isinstance(data, str | Path):
        return _item_shards(data, text_field)
    probe = open_records(data, text_field=text_field)  # checks the path and the format
    first = next(iter(probe), None)
    fields = tuple(probe.fields) if probe.fields else None
    fixed = first.line if first is not None else math.inf
    path, fmt = str(data), probe.format

    if fmt == "jsonl" and not path.endswith(".gz"):
        size = os.path.getsize(path)
        n = max(1, min(math.ceil(size / MIN_SHARD_BYTES),
                       max(math.ceil(size / MAX_SHARD_BYTES), SHARDS_PER_WORKER * workers)))
        points = _cut_points(path, n)
        ranges = list(zip(points, points[1:], strict=False))
        if size <= LOCAL_COUNT_BYTES:  # counting here beats starting tasks (~1 GB/s)
            breaks = [count_line_breaks(path, a, b) for a, b in ranges]
        else:
            import ray  # lazy: optional dependency

            count = ray.remote(num_cpus=0)(count_line_breaks)
            breaks = ray.get([count.remote(path, a, b) for a, b in ranges])
        starts = [1 + sum(breaks[:i]) for i in range(len(breaks))]
        return [Shard(i, path, fmt, (a, b), first_line=line, fields=fields if line > fixed else None)
                for i, ((a, b), line) in enumerate(zip(ranges, starts, strict=True))]
    if fmt == "parquet":
        import pyarrow.parquet as pq  # lazy: as in load.py

        meta = pq.ParquetFile(path).metadata
        rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        starts = [1 + sum(rows[:g]) for g in range(len(rows))]
        return [Shard(g, path, fmt, row_groups=(g,), first_line=line, fields=fields if line > fixed else None)
                for g, line in enumerate(starts)] or [Shard(0, path, fmt)]
    return [Shard(0, path, fmt)]


def _item_shards(items: Iterable[Any], text_field: Any) -> list[Shard]:
    import ray  # lazy: optional dependency

    records = as_records(items, text_field)
    records.bad = _Pending(0)
    shards: list[Shard] = []
    events: list[Event] = []

    def flush() -> None:
        shards.append(Shard(len(shards), items=ray.put(list(events))))
        events.clear()

    for rec in records:
        events.extend(records.bad.drain())
        events.append((rec.line, rec))
        if len(events) >= ITEMS_PER_SHARD:
            flush()
    events.extend(records.bad.drain())
    if events or not shards:
        flush()
    return shards
