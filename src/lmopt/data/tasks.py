"""Zero-shot multiple-choice and cloze tasks read into items, formatted as lm-evaluation-harness does.

Each task turns its rows into `MCItem`s: one (context, continuation) request per choice and the gold
index. Files come from the data dir (`shared/data` layout) or, when online, the HF datasets
(`hub_tasks.py`). Users' own tasks: `mc:PATH` reads jsonl rows `{"query": str, "choices": [str],
"gold": int}`. Reading items is data work (decontamination reads them too); scoring them is
`lmopt.evaluate.mc`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmopt.data.hub_tasks import hub_rows
from lmopt.errors import LmoptError
from lmopt.settings import default_data_dir


@dataclass
class MCItem:
    requests: list[tuple[str, str]]
    """One (context, continuation) per choice; LAMBADA has a single request."""
    gold: int
    norm_texts: list[str]
    """The text whose UTF-8 length in bytes normalizes each choice's log-likelihood (acc_norm)."""


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.exists():
        raise FileNotFoundError(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LmoptError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None


def _choices_item(context: str, choices: list[str], gold: int) -> MCItem:
    return MCItem([(context, " " + c) for c in choices], int(gold), [" " + c for c in choices])


def _query_rows(rows: Iterator[tuple[int, dict]], fmt: Callable[[dict], MCItem], path: Path) -> list[MCItem]:
    items = []
    for lineno, row in rows:
        try:
            items.append(fmt(row))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise LmoptError(f"{path}:{lineno}: bad row ({type(exc).__name__}: {exc})") from None
    return items


def _arc(row: dict) -> MCItem:
    return _choices_item(row["query"] + "\nAnswer:", row["choices"], row["gold"])


def _boolq(row: dict) -> MCItem:
    return _choices_item(row["query"] + "\nAnswer:", ["no", "yes"], row["gold"])


def _obqa(row: dict) -> MCItem:
    return _choices_item(row["query"], row["choices"], row["gold"])


def _copa(row: dict) -> MCItem:
    # The harness lower-cases the first letter: "... therefore the toilet filled with water."
    return _choices_item(row["query"], [c[0].lower() + c[1:] for c in row["choices"]], row["gold"])


def _winogrande(row: dict) -> MCItem:
    # Partial scoring: the shared continuation is scored after each filled-in context.
    cont = " " + row["continuation"]
    return MCItem([(ctx, cont) for ctx in row["context_options"]], int(row["gold"]),
                  [cont] * len(row["context_options"]))


def _lambada(row: dict) -> MCItem:
    return MCItem([(row["context"], " " + row["continuation"])], 0, [" " + row["continuation"]])


def _user_mc(row: dict) -> MCItem:
    choices = row["choices"]
    if not isinstance(choices, list) or not choices or not 0 <= int(row["gold"]) < len(choices):
        raise ValueError("'choices' must be a non-empty list and 'gold' an index into it")
    query = str(row["query"])
    sep = "" if query[-1:].isspace() else " "
    return MCItem([(query, sep + c) for c in choices], int(row["gold"]), [sep + c for c in choices])


def _piqa(row: dict) -> MCItem:
    return _choices_item(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], row["label"])


def _local_piqa(data_dir: Path) -> list[MCItem]:
    """PIQA's local files keep the labels apart from the rows, one per line."""
    path, labels = data_dir / "piqa" / "valid.jsonl", data_dir / "piqa" / "valid-labels.lst"
    golds = [int(x) for x in labels.read_text().split()]
    rows = list(_jsonl(path))
    if len(rows) != len(golds):
        raise LmoptError(f"{labels}: {len(golds)} labels for {len(rows)} rows in {path}")
    return [_piqa({**r, "label": g}) for (_, r), g in zip(rows, golds, strict=True)]


FORMATS: dict[str, Callable[[dict], MCItem]] = {
    "piqa": _piqa,
    "arc_easy": _arc,
    "arc_challenge": _arc,
    "boolq": _boolq,
    "winogrande": _winogrande,
    "openbookqa": _obqa,
    "copa": _copa,
    "lambada": _lambada,
}
"""Task name -> formatter of one row (in the MosaicML file layout that `hub_tasks` maps hub rows to)."""
LOCAL_FILES: dict[str, str] = {
    "arc_easy": "arc_easy/arc_easy.jsonl",
    "arc_challenge": "arc_challenge/arc_challenge.jsonl",
    "boolq": "boolq/boolq.jsonl",
    "winogrande": "winogrande/winogrande.jsonl",
    "openbookqa": "openbookqa/openbook_qa.jsonl",
    "copa": "copa/copa.jsonl",
    "lambada": "lambada_openai/lambada_openai.jsonl",
}
"""Task name -> its file under the data dir; PIQA has its own reader."""
MC_TASKS = tuple(FORMATS)
GREEDY_TASKS = ("lambada",)  # accuracy = the continuation is the greedy output


def load_task(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[MCItem]:
    """Items of a named task (first `limit`), or of a user's `mc:PATH` file."""
    if name.startswith("mc:"):
        path = Path(name[3:]).expanduser()
        if not path.exists():
            raise LmoptError(f"{path}: task file not found")
        items = _query_rows(_jsonl(path), _user_mc, path)
        return items[:limit] if limit else items
    if name not in MC_TASKS:
        raise LmoptError(f"unknown task '{name}' (choose {', '.join(MC_TASKS)}, pydoc, wikitext2, "
                         "a text file, or mc:PATH)")
    root = Path(data_dir) if data_dir else default_data_dir()
    try:
        if root is None:
            raise FileNotFoundError(name)
        if name == "piqa":
            items = _local_piqa(root)
        else:
            path = root / LOCAL_FILES[name]
            items = _query_rows(_jsonl(path), FORMATS[name], path)
    except FileNotFoundError:
        items = [FORMATS[name](row) for row in hub_rows(name, root)]
    return items[:limit] if limit else items
