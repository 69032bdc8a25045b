"""The user's task data for `select`: rows read from a JSONL file (or given as a list), split into a training
part (for the candidates that adapt) and an evaluation part.

Row shapes:
- classify: `{"text", "label"}`, or the multiple-choice layout of the shared evaluation files
  (`{"query", "choices", "gold"}`: text = query, label = choices[gold]; BoolQ's labels are no / yes);
- generate / text2text: `{"prompt", "response"}`, `{"input", "output"}` or `{"instruction", "input"?,
  "output"}` (an Alpaca row: instruction and input joined by a blank line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError

TASK_TYPES = ("generate", "classify", "text2text")


@dataclass(frozen=True)
class Example:
    source: str
    """The text to classify, or the prompt / input."""
    target: str
    """The label, or the reference output."""


@dataclass
class TaskData:
    task_type: str
    train: list[Example]
    eval: list[Example]

    @property
    def labels(self) -> list[str]:
        """Classify: the label set, sorted (training and evaluation labels together)."""
        return sorted({e.target for e in self.train + self.eval})


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path).expanduser()
    if not path.exists():
        raise LmoptError(f"{path}: data file not found")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LmoptError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise LmoptError(f"{path}:{number}: expected a JSON object per line")
            rows.append(row)
    if not rows:
        raise LmoptError(f"{path}: no rows")
    return rows


def to_example(row: dict[str, Any], task_type: str, where: str) -> Example:
    if task_type == "classify":
        if "text" in row and "label" in row:
            return Example(str(row["text"]), str(row["label"]))
        if {"query", "choices", "gold"} <= set(row):
            return Example(str(row["query"]), str(row["choices"][int(row["gold"])]))
        raise LmoptError(f"{where}: a classify row needs 'text' and 'label' (or 'query', 'choices', 'gold'); "
                         f"has {sorted(row)}")
    for source, target in (("prompt", "response"), ("input", "output")):
        if source in row and target in row and (source != "input" or "instruction" not in row):
            return Example(str(row[source]), str(row[target]))
    if "instruction" in row and "output" in row:
        extra = str(row.get("input") or "").strip()
        return Example(str(row["instruction"]).strip() + (f"\n\n{extra}" if extra else ""), str(row["output"]))
    raise LmoptError(f"{where}: a {task_type} row needs 'prompt'+'response', 'input'+'output' or "
                     f"'instruction'+'output'; has {sorted(row)}")


def examples(rows: list[dict[str, Any]] | str | Path, task_type: str, where: str = "data") -> list[Example]:
    if task_type not in TASK_TYPES:
        raise LmoptError(f"unknown task type '{task_type}' (choose {', '.join(TASK_TYPES)})")
    if isinstance(rows, (str, Path)):
        where, rows = str(rows), read_rows(rows)
    return [to_example(row, task_type, f"{where}: row {i + 1}") for i, row in enumerate(rows)]


def load_task_data(task_type: str, data: Any, eval_data: Any = None, train_rows: int | None = None,
                   train_limit: int | None = None, eval_limit: int | None = None) -> TaskData:
    """Training and evaluation examples: `eval_data` when given, else the rows after the first
    `train_rows` (default: the first half) of `data`; each part capped by its limit."""
    rows = examples(data, task_type)
    if eval_data is not None:
        train, held = rows, examples(eval_data, task_type, "eval_data")
    else:
        cut = len(rows) // 2 if train_rows is None else train_rows
        if cut >= len(rows):
            raise LmoptError(f"data: train_rows={cut} leaves no evaluation rows (the file has {len(rows)})")
        train, held = rows[:cut], rows[cut:]
    train, held = train[:train_limit] if train_limit else train, held[:eval_limit] if eval_limit else held
    if not held:
        raise LmoptError("data: no evaluation rows")
    result = TaskData(task_type, train, held)
    if task_type == "classify" and len(result.labels) < 2:
        raise LmoptError(f"data: classification needs at least two labels, found {result.labels}")
    return result
