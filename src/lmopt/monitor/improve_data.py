"""Training rows from user feedback: well-rated responses as served, and users' corrections.

`feedback_rows(store, window, ...)` reads the rated requests of a feedback window from the traffic
store (`lmopt.monitor.drift_windows` specs, applied to the time of the rating) and turns each rated
response into at most one `{"prompt", "response"}` row:
- a correction (the answer the user wanted) becomes the response, whatever the rating;
- otherwise a response rated at least `min_rating` is kept as served, unless the server cut it at
  `max_tokens` (finish reason `length`): trained on with the chat template's end of turn, a cut answer
  teaches the model to stop mid-sentence, so it is left out and counted as `truncated`;
- anything else (a bad rating without a correction) teaches nothing and is left out.
A response rated more than once counts by its latest correction, else its latest rating.
Blank lines inside a field are folded to single newlines, so `lmopt.data.clean` (which joins the
fields with a blank line) writes each field back after scrubbing PII.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.io import atomic_write_text
from lmopt.monitor.drift_windows import TimeWindow, parse_window
from lmopt.monitor.traffic import TrafficStore

BLANK_LINES = re.compile(r"\n\s*\n")


def _user_text(row: dict[str, Any]) -> str:
    """What the user asked: the last user message of a chat (the system prompt before it, if any),
    else the completion prompt."""
    messages = row.get("messages") or []
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) == 1:
        system = [m["content"] for m in messages if m.get("role") == "system" and m.get("content")]
        return "\n".join([*system, users[0]["content"] or ""])
    return row.get("prompt") or ""


def _fold(text: str) -> str:
    return BLANK_LINES.sub("\n", text.strip())


def rated_window(store: TrafficStore, spec: str) -> list[dict[str, Any]]:
    """Rated requests whose rating falls in the window (`last:N`: the N most recent ratings)."""
    where = parse_window(spec)
    if not isinstance(where, TimeWindow):
        raise LmoptError(f"feedback window '{spec}': a traffic window (last:N, hours:H, days:D, range:A..B), "
                         "not a file (a file of rows can be cleaned and trained on with `lmopt run`)")
    rows = store.rated(since=where.since, until=where.until)
    return rows[-where.last:] if where.last else rows


def feedback_rows(rated: list[dict[str, Any]], min_rating: float = 0.5,
                  corrections: bool = True) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Training rows from rated requests, and counts of what was kept and why the rest was not."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rated:  # oldest rating first: later ones override, a correction is never lost to a rating
        old = latest.get(row["response_id"])
        if old is not None and old.get("correction") and not row.get("correction"):
            row = {**row, "correction": old["correction"]}
        latest[row["response_id"]] = row
    rows, counts = [], {"rated": len(latest), "corrections": 0, "well_rated": 0, "truncated": 0, "left_out": 0}
    for row in latest.values():
        prompt = _fold(_user_text(row))
        if corrections and (row.get("correction") or "").strip():
            answer, kind = row["correction"], "corrections"
        elif row["rating"] >= min_rating and (row.get("response") or "").strip():
            if row.get("finish_reason") == "length":
                counts["truncated"] += 1
                continue
            answer, kind = row["response"], "well_rated"
        else:
            counts["left_out"] += 1
            continue
        if not prompt:
            counts["left_out"] += 1
            continue
        rows.append({"prompt": prompt, "response": _fold(answer)})
        counts[kind] += 1
    return rows, counts


def write_rows(rows: list[dict[str, str]], directory: Path) -> Path:
    """Write rows to `directory/feedback-<content hash>.jsonl` (the same rows: the same file, so the
    recipe steps after it are cached)."""
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    path = Path(directory) / f"feedback-{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path
