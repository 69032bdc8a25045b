"""Atomic, streaming jsonl output: rows go to a temp file that replaces the target only when complete."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

from lmopt.data.load import Record
from lmopt.io import atomic_open


class JsonlWriter:
    """`with JsonlWriter(path) as w: w.write(row)`; on an exception the target is left untouched."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.count = 0

    def __enter__(self) -> JsonlWriter:
        self._stack = ExitStack()
        self._fh = self._stack.enter_context(atomic_open(self.path))
        return self

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self.count += 1

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stack.__exit__(exc_type, exc, tb)  # replaces the target, or removes the temp file


def record_row(rec: Record) -> dict[str, Any]:
    """The row to write for a record: its original fields, with the (possibly edited) text put back.

    A record made of several fields keeps the original fields when its text was not changed; when it
    was, the edited parts are written back field by field (split on the blank lines that joined them).
    """
    row = dict(rec.row)
    if len(rec.fields) == 1:
        row[rec.fields[0]] = rec.text
        return row
    present = [f for f in rec.fields if row.get(f)]
    parts = rec.text.split("\n\n")
    if len(parts) == len(present):
        row.update(zip(present, parts, strict=True))
    return row
