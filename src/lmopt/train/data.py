"""Training data in: read a path or an in-memory list into raw-text documents or chat conversations.

Accepted sources:
- a `.txt` file (any suffix but `.jsonl` and `.json`): raw text, documents separated by blank lines;
- a `.jsonl` file, or a `.json` file holding an array (or an object whose first list holds them), of
  rows shaped as one of:
  `{"text": ...}` (raw), `{"messages": [{"role", "content"}, ...]}`,
  `{"prompt", "response"}` (Dolly style), `{"instruction", "input", "output"}` (Alpaca style);
- a list of strings (raw documents) or of such dicts;
- a named text source of `lmopt.data.text` (`pydoc-train`, `pydoc`, `wikitext2`): raw text documents.

Files are read by `lmopt.data.text.file_text` (text) and `lmopt.data.load` (jsonl, json rows).
`read_records(source, format)` returns `("text", [str, ...])` or `("chat", [[message, ...], ...])`.
Bad rows fail with one `LmoptError` naming the file and line (or the list index); rows the file reader
rejects (invalid JSON, not UTF-8) are all named in it, with their lines.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmopt.data.load import open_records
from lmopt.data.text import file_text, load_text
from lmopt.errors import LmoptError

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
NAMED_SOURCES = ("pydoc-train", "pydoc", "wikitext2")


def read_records(source: str | Path | Sequence[Any], format: str = "auto") -> tuple[str, list[Any]]:
    """Read `source` and return (kind, records) with kind "text" or "chat" (see the module docstring)."""
    if isinstance(source, str) and source in NAMED_SOURCES and not Path(source).exists():
        rows, where = _documents(load_text(source)), source
    elif isinstance(source, (str, Path)):
        path = Path(source)
        rows = _json_rows(path) if path.suffix in (".jsonl", ".json") else _documents(file_text(path))
        where = str(path)
    else:
        rows, where = list(source), "data"
    if not rows:
        raise LmoptError(f"{where}: no training rows")
    kind = _detect(rows, where) if format == "auto" else format
    if kind == "text":
        return "text", [_text_of(row, f"{where}:{_loc(where, i)}") for i, row in enumerate(rows)]
    if kind == "chat":
        return "chat", [to_messages(row, f"{where}:{_loc(where, i)}") for i, row in enumerate(rows)]
    raise LmoptError(f"{where}: unknown format '{format}' (choose auto, text, chat)")


def _loc(where: str, index: int) -> str:
    """Line number for files (1-based), item index for in-memory lists."""
    return f"item {index}" if where == "data" else str(index + 1)


def _documents(text: str) -> list[str]:
    """Raw text split into documents on blank lines, each stripped."""
    return [doc.strip() for doc in text.split("\n\n") if doc.strip()]


def _json_rows(path: Path) -> list[Any]:
    """Every row of a `.jsonl` / `.json` file; any bad row fails the read, naming all of them."""
    stream = open_records(path, format=path.suffix[1:])
    rows = []
    for line, row in stream.iter_rows():
        # load checks a jsonl line's bytes before parsing it, but a .json file is parsed whole (its
        # undecodable bytes end up inside strings): check every string of the row, used or not
        if stream.format == "json" and not _is_utf8(row):
            stream.bad.add(line, "is not UTF-8")
        else:
            rows.append(row)
    if stream.bad.total:
        raise stream.bad.error()
    return rows


def _is_utf8(row: Any) -> bool:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _detect(rows: list[Any], where: str) -> str:
    first = rows[0]
    if isinstance(first, str) or (isinstance(first, dict) and "text" in first):
        return "text"
    if isinstance(first, dict) and (
        {"messages"} <= first.keys()
        or {"prompt", "response"} <= first.keys()
        or {"instruction", "output"} <= first.keys()
    ):
        return "chat"
    keys = sorted(first) if isinstance(first, dict) else type(first).__name__
    raise LmoptError(
        f"{where}: cannot tell the format of the first row ({keys}); expected a 'text' field, "
        f"'messages', 'prompt'+'response' or 'instruction'+'output'"
    )


def _text_of(row: Any, where: str) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return row["text"]
    raise LmoptError(f"{where}: row has no 'text' string")


def to_messages(row: Any, where: str = "row") -> list[Message]:
    """One chat row (any accepted shape) as a list of {"role", "content"} messages."""
    if not isinstance(row, dict):
        raise LmoptError(f"{where}: a chat row must be an object, got {type(row).__name__}")
    if "messages" in row:
        return _check_messages(row["messages"], where)
    if "prompt" in row and "response" in row:
        return _check_messages(
            [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}],
            where,
        )
    if "instruction" in row and "output" in row:
        user = str(row["instruction"]).strip()
        if str(row.get("input") or "").strip():
            user += "\n\n" + str(row["input"]).strip()
        return _check_messages(
            [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}], where
        )
    raise LmoptError(
        f"{where}: chat row needs 'messages', 'prompt'+'response' or 'instruction'+'output' "
        f"(has {sorted(row)})"
    )


def _check_messages(messages: Any, where: str) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise LmoptError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for j, msg in enumerate(messages):
        good = isinstance(msg, dict) and msg.get("role") in ROLES and isinstance(msg.get("content"), str)
        if not good:
            raise LmoptError(f"{where}: messages.{j}: needs a role in {ROLES} and a string content")
        out.append({"role": msg["role"], "content": msg["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise LmoptError(f"{where}: no assistant message to learn from")
    return out


def split_records(records: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A fixed random held-out split (by `seed`); at least one record each side when there are two."""
    n_val = round(len(records) * val_fraction)
    if val_fraction > 0 and len(records) >= 2:
        n_val = min(max(n_val, 1), len(records) - 1)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return (
        [r for i, r in enumerate(records) if i not in held],
        [r for i, r in enumerate(records) if i in held],
    )
