"""Decontamination: find training documents that share a long n-gram with a named evaluation set.

As in GPT-3 (Brown et al. 2020, appendix C): canonical words (lower case, no punctuation), 13-grams
by default. Each evaluation item is its context plus its gold continuation, as lmopt scores it
(`lmopt.data.tasks.load_task`); perplexity sources (pydoc, wikitext2, a text file) contribute
each blank-line-separated paragraph. An item shorter than n words is matched whole when it has at
least `min_words` words; shorter ones cannot be told from ordinary phrases and are counted as skipped.

The prompt labels lmopt adds ("Question:", "Answer:") are removed first: contaminated text has the
item's words, not our template. The index is one sorted uint64 array of n-gram hashes per n-gram
length over all sets (8 bytes per n-gram), cheap to send to worker processes; a document is checked
with one `searchsorted` per length, and only a hit looks up which set it came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmopt.data.normalize import canonical_words, ngram_hashes, word_hashes
from lmopt.data.tasks import MC_TASKS, load_task
from lmopt.data.text import TEXT_SOURCES, load_text
from lmopt.errors import LmoptError

BITMAP_SIZE = 1 << 23  # 8 MB of bools; about 7% set for the 0.6M n-grams of seven zero-shot tasks
_LABELS = re.compile(r"\b(?:Question|Answer):")


def eval_texts(name: str, data_dir: str | Path | None = None) -> Iterator[str]:
    """The texts of evaluation set `name`: one per multiple-choice item, or per paragraph of a text source."""
    if name in MC_TASKS or name.startswith("mc:"):
        for item in load_task(name, data_dir):
            context, continuation = item.requests[item.gold if len(item.requests) > 1 else 0]
            yield _LABELS.sub(" ", context + continuation)
        return
    if name not in TEXT_SOURCES and not Path(name).exists():
        raise LmoptError(f"decontaminate: unknown evaluation set '{name}' (choose {', '.join(MC_TASKS)}, "
                         f"{', '.join(TEXT_SOURCES)} or a text file)")
    for para in load_text(name, data_dir).split("\n\n"):
        if para.strip():
            yield para


@dataclass
class EvalIndex:
    """n-gram hashes of evaluation sets: `{name: {length: sorted uint64 array}}`."""

    n: int = 13
    min_words: int = 8
    sets: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    """Items shorter than `min_words` words, per set (not matched)."""

    def add(self, name: str, texts: Iterator[str]) -> None:
        grams: dict[int, list[np.ndarray]] = {}
        items = skipped = 0
        for text in texts:
            words = canonical_words(text)
            items += 1
            if len(words) < self.min_words:
                skipped += 1
                continue
            length = min(self.n, len(words))
            grams.setdefault(length, []).append(ngram_hashes(words, length))
        self.sets[name] = {k: np.unique(np.concatenate(v)) for k, v in grams.items()}
        self.items[name], self.skipped[name] = items, skipped
        self.merged = {}

    def _merged(self) -> dict[int, np.ndarray]:
        if not self.merged:
            lengths = {k for by_len in self.sets.values() for k in by_len}
            self.merged = {k: np.unique(np.concatenate([s[k] for s in self.sets.values() if k in s]))
                           for k in sorted(lengths, reverse=True)}
            # A bitmap over the low hash bits answers "surely absent" for most n-grams with one
            # vectorized lookup; only the rest go to the binary search (which is cache-unfriendly).
            self.bitmap = np.zeros(BITMAP_SIZE, dtype=bool)
            for table in self.merged.values():
                self.bitmap[(table & np.uint64(BITMAP_SIZE - 1)).astype(np.int64)] = True
        return self.merged

    def match(self, text: str, words: np.ndarray | None = None) -> str | None:
        """The name of the first evaluation set sharing an n-gram with `text`, or None.

        `words`: the `word_hashes` of `canonical_words(text)`, when the caller has them already.
        """
        words = word_hashes(canonical_words(text)) if words is None else words
        for length, table in self._merged().items():
            if len(words) < length:
                continue
            grams = ngram_hashes(words, length)
            grams = grams[self.bitmap[(grams & np.uint64(BITMAP_SIZE - 1)).astype(np.int64)]]
            hits = grams[_contains(table, grams)]
            if len(hits):
                return next(name for name, by_len in self.sets.items()
                            if length in by_len and _contains(by_len[length], hits).any())
        return None

    merged: dict[int, np.ndarray] = field(default_factory=dict)
    bitmap: np.ndarray | None = None
    """All sets' hashes per n-gram length (longest first), for the one lookup per length."""

    @property
    def size(self) -> int:
        return sum(len(t) for by_len in self.sets.values() for t in by_len.values())


def _contains(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(len(values),) bool: which values are in the sorted `table`."""
    if not len(table):
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(table, values).clip(max=len(table) - 1)
    return table[pos] == values


def build_index(names: list[str], data_dir: str | Path | None = None, n: int = 13,
                min_words: int = 8) -> EvalIndex:
    """An `EvalIndex` over the named evaluation sets (task names, text sources, or files)."""
    index = EvalIndex(n=n, min_words=min_words)
    for name in names:
        index.add(name, eval_texts(name, data_dir))
    return index
