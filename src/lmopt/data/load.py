"""Streaming dataset readers: text, jsonl, json, csv, parquet and HF datasets, one `Record` at a time.

```python
from lmopt.data.load import open_records

stream = open_records("corpus.jsonl")          # or .txt/.csv/.parquet/.json(.gz), hf:NAME, a saved dataset
for rec in stream:                              # constant memory: rows are read as they are used
    rec.text, rec.line, rec.row                 # text to train on, 1-based line/row number, the full row
print(stream.bad.summary())                     # bad rows: counted per reason with their line numbers
```

A bad row (invalid JSON, text that is not UTF-8, a missing or non-string text field, a CSV row
with the wrong number of fields) never stops the run and never vanishes: it is counted in
`stream.bad` with its line number. `read_records(path, bad=...)` is the same as a plain iterator.
`stream.iter_rows()` yields the parsed rows before any text field is picked (for rows of other shapes,
such as chat messages); callers that cannot skip a row raise `stream.bad.error()`.

Text fields: `text_field` names one field or several (joined by a blank line). By default the
first of `DEFAULT_TEXT_FIELDS` found in the first good row is used; rows with `instruction` and
`output` (Alpaca style) use `instruction`, `input`, `output` joined.
`.txt` files: one record per blank-line-separated paragraph (`split="paragraph"`), per line
(`"line"`) or the whole file (`"file"`).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError, missing_dependency

DEFAULT_TEXT_FIELDS = ("text", "content", "document", "abstract", "body", "passage")
INSTRUCTION_FIELDS = ("instruction", "input", "output")
FORMATS = ("txt", "jsonl", "json", "csv", "parquet", "hf")
MAX_BAD_LINES = 1000  # line numbers kept per reason; the counts are always complete


@dataclass(slots=True)
class Record:
    """One row: the text to process, where it came from, and the full row (written back on output)."""

    text: str
    line: int
    """1-based line number (jsonl, txt, csv) or row number (parquet, json, HF datasets)."""
    row: dict[str, Any]
    fields: tuple[str, ...] = ("text",)
    """The row's fields that make up `text` (joined by a blank line)."""


@dataclass
class BadRows:
    """Bad rows per reason: complete counts, and the first `MAX_BAD_LINES` line numbers of each."""

    source: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    lines: dict[str, list[int]] = field(default_factory=dict)

    def add(self, line: int, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.lines.setdefault(reason, [])
        if len(kept) < MAX_BAD_LINES:
            kept.append(line)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line per reason: `file: N rows <reason> (lines 3, 17, ...)`."""
        out = []
        for reason, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            shown = ", ".join(map(str, self.lines[reason][:10])) + (", ..." if n > 10 else "")
            out.append(f"{self.source}: {n} row{'s' * (n != 1)} {reason} (line {shown})")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        lines = {k: v[:100] for k, v in self.lines.items()}
        return {"total": self.total, "counts": dict(self.counts), "lines": lines}

    def error(self) -> LmoptError:
        """One error for callers that cannot skip rows: `file:line: row <reason>` of the first bad
        row, then (when there are more) every reason with its lines."""
        line, reason = min((lines[0], reason) for reason, lines in self.lines.items())
        message = f"{self.source}:{line}: row {reason}"
        if self.total > 1:
            message += f" ({self.total} bad rows in all)\n{self.summary()}"
        return LmoptError(message)


def detect_format(path: str | Path) -> str:
    """The format from the name: `hf:` prefix, a saved-dataset dir, or the suffix (before `.gz`)."""
    name = str(path)
    if name.startswith("hf:"):
        return "hf"
    p = Path(name)
    if p.is_dir():
        return "hf"
    suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1].lstrip(".") if suffixes else "txt"
    aliases = {"ndjson": "jsonl", "tsv": "csv", "pq": "parquet", "text": "txt", "md": "txt", "raw": "txt"}
    return aliases.get(ext, ext)


class RecordStream:
    """An iterable over the records of one source; `bad` fills in as it is iterated."""

    def __init__(self, path: str | Path, *, text_field: str | list[str] | None = None,
                 format: str | None = None, split: str = "paragraph") -> None:
        self.path, self.format = str(path), format or detect_format(path)
        if self.format not in FORMATS:
            raise LmoptError(f"{path}: unknown format '{self.format}' (choose {', '.join(FORMATS)})")
        if self.format != "hf" and not Path(self.path).is_file():
            raise LmoptError(f"{path}: file not found")
        if split not in ("paragraph", "line", "file"):
            raise LmoptError(f"split: unknown value '{split}' (choose paragraph, line, file)")
        if isinstance(text_field, str):
            text_field = [text_field]
        self.fields = list(text_field) if text_field else None
        self.explicit = self.fields is not None
        self.split = split
        self.bad = BadRows(source=self.path)
        self.rows = 0

    def __iter__(self) -> Iterator[Record]:
        for line, row in self.iter_rows():
            rec = self._record(line, row)
            if rec is not None:
                self.rows += 1
                yield rec

    def iter_rows(self) -> Iterator[tuple[int, Any]]:
        """(line, row) pairs as parsed, before any text field is picked; bad lines go into `bad`."""
        reader = {"txt": self._txt, "jsonl": self._jsonl, "json": self._json, "csv": self._csv,
                  "parquet": self._parquet, "hf": self._hf}[self.format]
        return reader()

    # --- rows -> records -------------------------------------------------------------------------
    def _record(self, line: int, row: Any) -> Record | None:
        if not isinstance(row, dict):
            self.bad.add(line, f"is not an object ({type(row).__name__})")
            return None
        fields = self.fields or self._guess_fields(row)
        parts = []
        for name in fields:
            value = row.get(name)
            if value is None and name == "input" and not self.explicit:
                continue  # Alpaca rows may lack `input`
            if not isinstance(value, str):
                why = f"has no text field '{name}'" if value is None else f"has a non-text '{name}' field"
                self.bad.add(line, why)
                return None
            if _has_surrogates(value):
                self.bad.add(line, "is not UTF-8")
                return None
            if value:
                parts.append(value)
        return Record("\n\n".join(parts), line, row, tuple(fields))

    def _guess_fields(self, row: dict) -> list[str]:
        for name in DEFAULT_TEXT_FIELDS:
            if name in row:
                self.fields = [name]
                return self.fields
        if "instruction" in row and "output" in row:
            self.fields = list(INSTRUCTION_FIELDS)
            return self.fields
        return [DEFAULT_TEXT_FIELDS[0]]  # reported as missing; guess again on the next row

    # --- format readers: yield (line, row) ------------------------------------------------------
    def _open(self) -> io.TextIOBase:
        # surrogateescape: a line with bytes that are not UTF-8 is reported as a bad row, not a crash
        if self.path.endswith(".gz"):
            return gzip.open(self.path, "rt", encoding="utf-8", errors="surrogateescape", newline="")
        return open(self.path, encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115

    def _jsonl(self) -> Iterator[tuple[int, Any]]:
        with self._open() as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if _has_surrogates(line):
                    self.bad.add(lineno, "is not UTF-8")
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    self.bad.add(lineno, f"is invalid JSON ({exc.msg})")

    def _txt(self) -> Iterator[tuple[int, Any]]:
        field_name = (self.fields or ["text"])[0]
        self.fields = [field_name]
        with self._open() as fh:
            if self.split == "file":
                yield 1, {field_name: fh.read()}
                return
            start, buf = 0, []
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if self.split == "line":
                    if line.strip():
                        yield lineno, {field_name: line}
                    continue
                if line.strip():
                    start = start or lineno
                    buf.append(line)
                elif buf:
                    yield start, {field_name: "\n".join(buf)}
                    start, buf = 0, []
            if buf:
                yield start, {field_name: "\n".join(buf)}

    def _json(self) -> Iterator[tuple[int, Any]]:
        # A JSON array cannot stream without a parser dependency: it is read whole (jsonl streams).
        with self._open() as fh:
            try:
                data = json.loads(fh.read())
            except json.JSONDecodeError as exc:
                raise LmoptError(f"{self.path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: the first list value
            data = next((v for v in data.values() if isinstance(v, list)), [data])
        if not isinstance(data, list):  # a bare string or number is not rows (a string would yield chars)
            raise LmoptError(f"{self.path}: expected a JSON array of rows")
        yield from enumerate(data, 1)

    def _csv(self) -> Iterator[tuple[int, Any]]:
        csv.field_size_limit(sys.maxsize)
        with self._open() as fh:
            delimiter = "\t" if self.path.removesuffix(".gz").endswith(".tsv") else ","
            reader = csv.reader(fh, delimiter=delimiter)
            try:
                header = next(reader)
            except StopIteration:
                return
            while True:
                start = reader.line_num + 1  # a quoted field may span lines: report the first
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    self.bad.add(start, f"is bad CSV ({exc})")
                    continue
                if not values:
                    continue
                if len(values) != len(header):
                    self.bad.add(start, f"has {len(values)} fields, the header has {len(header)}")
                    continue
                yield start, dict(zip(header, values, strict=True))

    def _parquet(self) -> Iterator[tuple[int, Any]]:
        import pyarrow.parquet as pq  # lazy: ~0.2 s, and this module is imported at CLI start-up

        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:
            raise LmoptError(f"{self.path}: not a readable parquet file ({exc})") from None
        n = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, row

    def _hf(self) -> Iterator[tuple[int, Any]]:
        yield from enumerate(_hf_rows(self.path), 1)


def _hf_rows(spec: str) -> Iterator[dict]:
    """`hf:NAME[:CONFIG][@SPLIT]` (streamed from the hub, or its local cache) or a `save_to_disk` dir."""
    try:  # lazy: ~1 s to import, needed for hub and saved HF datasets only
        import datasets
    except ImportError:
        raise missing_dependency("datasets") from None
    if not spec.startswith("hf:"):
        try:
            ds = datasets.load_from_disk(spec)
        except Exception as exc:
            raise LmoptError(f"{spec}: not a saved HF dataset ({type(exc).__name__}: {exc})") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        yield from ds
        return
    name, _, split = spec[3:].partition("@")
    name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
        yield from ds
    except Exception as exc:
        raise LmoptError(f"{spec}: could not load the HF dataset ({type(exc).__name__}: {exc})") from None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def open_records(path: str | Path, *, text_field: str | list[str] | None = None, format: str | None = None,
                 split: str = "paragraph") -> RecordStream:
    """A `RecordStream` over `path` (see the module docstring); iterate it, then read `.bad`."""
    return RecordStream(path, text_field=text_field, format=format, split=split)


def read_records(path: str | Path, *, text_field: str | list[str] | None = None, format: str | None = None,
                 split: str = "paragraph", bad: BadRows | None = None) -> Iterator[Record]:
    """Yield the records of `path`; bad rows go into `bad` (if given), else are warned about at the end."""
    stream = open_records(path, text_field=text_field, format=format, split=split)
    yield from stream
    if bad is not None:
        bad.source = stream.bad.source
        for reason, n in stream.bad.counts.items():
            bad.counts[reason] = bad.counts.get(reason, 0) + n
            bad.lines.setdefault(reason, []).extend(stream.bad.lines[reason])
    elif stream.bad.total:
        warnings.warn(f"skipped bad rows:\n{stream.bad.summary()}", stacklevel=2)
