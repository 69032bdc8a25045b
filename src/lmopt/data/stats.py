"""`dataset_stats(path)`: a quick look at a dataset before cleaning it (one streaming pass, one process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lmopt.data.dedup import exact_key
from lmopt.data.load import open_records
from lmopt.data.pii import find_pii


def dataset_stats(path: str | Path, text_field: str | list[str] | None = None) -> dict[str, Any]:
    """Rows, bad rows, word/character lengths, exact duplicates and PII spans per kind."""
    stream = open_records(path, text_field=text_field)
    words: list[int] = []  # one int per row: fine for a statistics pass
    chars, dups, pii = 0, 0, {}
    seen: set[bytes] = set()
    for rec in stream:
        words.append(len(rec.text.split()))
        chars += len(rec.text)
        key = exact_key(rec.text)
        dups += key in seen
        seen.add(key)
        for span in find_pii(rec.text):
            pii[span.kind] = pii.get(span.kind, 0) + 1
    w = np.array(words or [0])
    return {"source": str(path), "format": stream.format, "text_fields": stream.fields, "rows": stream.rows,
            "bad_rows": stream.bad.to_dict(), "characters": chars, "words": int(w.sum()),
            "words_per_row": {"mean": round(float(w.mean()), 1), "min": int(w.min()),
                              "p50": int(np.percentile(w, 50)), "p90": int(np.percentile(w, 90)),
                              "max": int(w.max())},
            "exact_duplicate_rows": dups, "pii_spans": pii}
