"""Windows of requests for drift checks and the improvement loop: from the traffic store or a dataset file.

A window spec is one of:
- `last:N`: the N most recent recorded requests (or, for feedback, the N most recent ratings);
- `hours:H`, `days:D`: what was recorded in the last H hours / D days;
- `range:START..END`: between two times, each an ISO date/time (`2025-05-01`, `2025-05-01T12:00`)
  or unix seconds; either side may be empty (`range:2025-05-01..`);
- anything else: a dataset file (.jsonl, .json, .csv, .parquet, .txt) of prompts, and optionally
  responses and ratings (fields below).

File rows: the prompt is the first of `prompt`, `question`, `query`, `instruction` (+ `input`), `text`;
or `messages` (their contents joined by blank lines, a final assistant message being the response).
The response is the first of `response`, `output`, `answer`, `completion`; `finish_reason`,
`completion_tokens` and `rating` are read when present. A `.txt` file: one prompt per paragraph.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmopt.data.load import open_records
from lmopt.errors import LmoptError
from lmopt.monitor.drift_features import Window
from lmopt.monitor.traffic import TrafficStore
from lmopt.serve.telemetry import chat_prompt_text

WINDOW_HELP = ("last:N, hours:H, days:D, range:START..END (ISO times or unix seconds) from the traffic "
               "store, or a dataset file of prompts (.jsonl/.json/.csv/.parquet/.txt)")
PROMPT_FIELDS = ("prompt", "question", "query", "instruction", "text")
RESPONSE_FIELDS = ("response", "output", "answer", "completion")


@dataclass(frozen=True)
class TimeWindow:
    """A window of the traffic store: the `last` N rows, or rows from `since` until `until`."""

    spec: str
    last: int | None = None
    since: float | None = None
    until: float | None = None


def _time(text: str, spec: str) -> float | None:
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise LmoptError(f"window '{spec}': '{text}' is neither an ISO date/time nor unix seconds") from None


def _positive(text: str, spec: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise LmoptError(f"window '{spec}': expected a positive number after ':' ({WINDOW_HELP})")
    return value


def parse_window(spec: str, now: float | None = None) -> TimeWindow | Path:
    """A traffic-store window, or the path of a dataset file (which must exist)."""
    kind, sep, arg = spec.partition(":")
    now = time.time() if now is None else now
    if sep and kind == "last":
        return TimeWindow(spec, last=_positive(arg, spec, int))
    if sep and kind in ("hours", "days"):
        seconds = _positive(arg, spec, float) * (3600 if kind == "hours" else 86400)
        return TimeWindow(spec, since=now - seconds)
    if sep and kind == "range":
        start, dots, end = arg.partition("..")
        if not dots:
            raise LmoptError(f"window '{spec}': expected range:START..END")
        return TimeWindow(spec, since=_time(start, spec), until=_time(end, spec))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise LmoptError(f"window '{spec}': no such file, and not a traffic window ({WINDOW_HELP})")
    return path


def traffic_window(store: TrafficStore, window: TimeWindow) -> Window:
    """The recorded requests of a window, with the ratings they got so far."""
    rows = store.requests(since=window.since, until=window.until, last=window.last)
    ids = {r["response_id"] for r in rows}
    since = rows[0]["created"] if rows else None
    ratings = [f["rating"] for f in store.feedback(since=since) if f["response_id"] in ids]
    return Window(prompts=[r["prompt"] or "" for r in rows], responses=[r["response"] or "" for r in rows],
                  finish_reasons=[r["finish_reason"] for r in rows],
                  completion_tokens=[r["completion_tokens"] for r in rows], ratings=ratings,
                  source=f"traffic {window.spec}")


def _first(row: dict[str, Any], names: tuple[str, ...]) -> str | None:
    return next((row[n] for n in names if isinstance(row.get(n), str)), None)


def _row_parts(row: Any) -> tuple[str | None, str | None]:
    """(prompt, response) of one file row; prompt None when the row has none."""
    if not isinstance(row, dict):
        return None, None
    messages = row.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        response = None
        if messages[-1].get("role") == "assistant" and len(messages) > 1:
            response, messages = str(messages[-1].get("content") or ""), messages[:-1]
        return chat_prompt_text(messages), response
    prompt = _first(row, PROMPT_FIELDS)
    if prompt is not None and "instruction" in row and isinstance(row.get("input"), str) and row["input"]:
        prompt = f"{prompt}\n\n{row['input']}"
    return prompt, _first(row, RESPONSE_FIELDS)


def file_window(path: str | Path) -> Window:
    """Prompts (and responses, ratings when the rows have them) of a dataset file."""
    stream = open_records(path)
    prompts, responses, finish, tokens, ratings = [], [], [], [], []
    for line, row in stream.iter_rows():
        prompt, response = _row_parts(row)
        if prompt is None:
            stream.bad.add(line, f"has no prompt ({', '.join(PROMPT_FIELDS)} or messages)")
            continue
        prompts.append(prompt)
        responses.append(response)
        finish.append(row.get("finish_reason"))
        tokens.append(row.get("completion_tokens") if isinstance(row.get("completion_tokens"), int) else None)
        if isinstance(row.get("rating"), int | float):
            ratings.append(float(row["rating"]))
    if stream.bad.total:  # the first bad row (the full list is one line per reason: too long here)
        raise LmoptError(str(stream.bad.error()).splitlines()[0])
    if not prompts:
        raise LmoptError(f"{path}: no prompts in the file")
    has_responses = all(r is not None for r in responses)
    return Window(prompts=prompts, responses=responses if has_responses else None,
                  finish_reasons=finish if has_responses else None,
                  completion_tokens=tokens if has_responses else None,
                  ratings=ratings or None, source=str(path))


def load_window(spec: str, store: TrafficStore | None = None, *, allow_empty: bool = False) -> Window:
    """The window a spec names; traffic windows need `store`. Empty windows are an error unless allowed."""
    where = parse_window(spec)
    if isinstance(where, Path):
        return file_window(where)
    if store is None:
        raise LmoptError(f"window '{spec}' reads the traffic store, but none was given")
    window = traffic_window(store, where)
    if not window.prompts and not allow_empty:
        raise LmoptError(f"window '{spec}': no recorded requests in {store.url} for that window")
    return window
