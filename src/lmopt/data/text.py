"""Named text sources for perplexity, calibration and quick training: `pydoc`, `wikitext2`, or a file.

- `pydoc`: Python's own documentation (`pydoc_data.topics`, present in every CPython), topics in
  sorted order and joined by blank lines. The last 20% of characters is the evaluation split
  (`pydoc`); the first 80% (`pydoc-train`) is for calibration and training, so the two never overlap.
- `wikitext2`: the raw WikiText-2 test split, `wikitext-2-raw/wiki.test.raw` in the data dir, or the
  HF dataset `wikitext/wikitext-2-raw-v1` when online.
- a path: a `.txt` file as is, or a `.jsonl` file whose rows have a `text` field (joined by blank lines).
"""

from __future__ import annotations

from pathlib import Path
from pydoc_data.topics import topics

from lmopt.data.load import open_records
from lmopt.errors import LmoptError
from lmopt.settings import default_data_dir

PYDOC_EVAL_FRACTION = 0.2
TEXT_SOURCES = ("pydoc", "pydoc-train", "wikitext2")


def pydoc_text(split: str = "eval") -> str:
    """Python's docs: `eval` = the held-out last 20%, `train` = the first 80%."""
    text = "\n\n".join(topics[key].strip() for key in sorted(topics))
    cut = int(len(text) * (1 - PYDOC_EVAL_FRACTION))
    cut = text.find("\n\n", cut) + 2  # split on a topic boundary
    if split == "eval":
        return text[cut:]
    if split == "train":
        return text[:cut]
    raise ValueError(f"unknown pydoc split {split!r}")


def wikitext2_text(data_dir: str | Path | None = None) -> str:
    """The raw WikiText-2 test split, from the data dir or (online) the HF dataset."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if data_dir is not None:
        path = Path(data_dir) / "wikitext-2-raw" / "wiki.test.raw"
        if path.exists():
            return path.read_text(encoding="utf-8")
    try:
        from datasets import load_dataset  # lazy: ~1 s to import, needed only without local files

        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
        return "".join(rows["text"])
    except Exception as exc:
        raise LmoptError(
            f"wikitext2: no wikitext-2-raw/wiki.test.raw under --data-dir ({data_dir}) and the HF "
            f"dataset could not be fetched ({type(exc).__name__})"
        ) from None


def file_text(path: str | Path, field: str = "text") -> str:
    """Text of a `.txt` file, or the `field` of each row of a `.jsonl` file joined by blank lines.

    `.jsonl` rows are read by `lmopt.data.load`; every bad row (invalid JSON, not UTF-8, no `field`)
    is collected first, so the one error names them all with their lines.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        return _jsonl_text(path, field)
    if not path.exists():
        raise LmoptError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LmoptError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _jsonl_text(path: Path, field: str) -> str:
    stream = open_records(path, format="jsonl")
    parts = []
    for line, row in stream.iter_rows():
        if isinstance(row, dict) and field in row:
            parts.append(str(row[field]))  # any JSON value as text, numbers included (as before)
        else:
            stream.bad.add(line, f"has no '{field}' field")
    if stream.bad.total:
        raise stream.bad.error()
    return "\n\n".join(parts)


def load_text(source: str, data_dir: str | Path | None = None) -> str:
    """Resolve a text source name or path (see the module docstring)."""
    if source == "pydoc":
        return pydoc_text("eval")
    if source == "pydoc-train":
        return pydoc_text("train")
    if source in ("wikitext2", "wikitext"):
        return wikitext2_text(data_dir)
    if Path(source).suffix in (".txt", ".jsonl", ".raw", ".md") or Path(source).exists():
        return file_text(source)
    raise LmoptError(f"unknown text source '{source}' (choose {', '.join(TEXT_SOURCES)} or a file path)")
