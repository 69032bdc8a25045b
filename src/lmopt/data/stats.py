"""`dataset_stats(path)`: a quick look at a dataset before cleaning it (one streaming pass, one process)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from lmopt.data.dedup import exact_key
from lmopt.data.load import open_records
from lmopt.data.pii import find_pii

SAMPLE = 100_000


def dataset_stats(path: str | Path, text_field: str | list[str] | None = None) -> dict[str, Any]:
    """Rows, bad rows, word/character lengths, exact duplicates and PII spans per kind."""
    stream = open_records(path, text_field=text_field)
    rng = random.Random(0)
    words: list[int] = []  # a reservoir sample: exact percentiles up to SAMPLE rows, estimates beyond
    chars, dups, pii, total_words, longest, shortest = 0, 0, {}, 0, 0, None
    seen: set[bytes] = set()  # 16 bytes per row: the only state that grows
    for i, rec in enumerate(stream):
        n = len(rec.text.split())
        total_words, longest = total_words + n, max(longest, n)
        shortest = n if shortest is None else min(shortest, n)
        if len(words) < SAMPLE:
            words.append(n)
        elif (j := rng.randrange(i + 1)) < SAMPLE:
            words[j] = n
        chars += len(rec.text)
        key = exact_key(rec.text)
        dups += key in seen
        seen.add(key)
        for span in find_pii(rec.text):
            pii[span.kind] = pii.get(span.kind, 0) + 1
    w = np.array(words or [0])
    return {"source": str(path), "format": stream.format, "text_fields": stream.fields, "rows": stream.rows,
            "bad_rows": stream.bad.to_dict(), "characters": chars, "words": total_words,
            "words_per_row": {"mean": round(total_words / max(stream.rows, 1), 1), "min": shortest or 0,
                              "p50": int(np.percentile(w, 50)), "p90": int(np.percentile(w, 90)),
                              "max": longest},
            "exact_duplicate_rows": dups, "pii_spans": pii}
