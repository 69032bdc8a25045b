"""What drift is measured on: windows of requests, their per-prompt features, and the statistics.

`features(window)` computes each prompt's tokens, dominant script, language (and the model's NLL when
a model is given) once; `merge_features` joins those of single requests (the monitor caches them).
The statistics (`js_divergence`, `ks_statistic`, `noise_floor`) are checked against scipy and brute
force in tests/monitor/test_drift.py.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmopt.errors import LmoptError

WORD_RE = re.compile(r"[^\W\d_]+|\d+|[^\w\s]")


@dataclass
class Window:
    """Requests to compare: prompts, and what is known of their responses and feedback."""

    prompts: list[str]
    responses: list[str] | None = None
    """None when the source has no responses (a dataset of prompts)."""
    finish_reasons: list[str | None] | None = None
    completion_tokens: list[int | None] | None = None
    ratings: list[float] | None = None
    """Ratings given to these requests; None when the source has no feedback."""
    source: str = ""

    def __len__(self) -> int:
        return len(self.prompts)


# --- statistics ------------------------------------------------------------------------------------


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence in bits (0..1) between two histograms (normalized here)."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("js_divergence: two non-empty histograms of the same shape")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0  # 0 log 0 = 0; m > 0 wherever a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, (kl(p) + kl(q)) / 2)


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if not len(a) or not len(b):
        raise ValueError("ks_statistic: two non-empty samples")
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


# --- per-prompt features ---------------------------------------------------------------------------


def hashed_tokens(text: str) -> list[int]:
    """Lowercased words, numbers and punctuation marks, each hashed to a stable 32-bit id."""
    return [zlib.crc32(w.encode()) for w in WORD_RE.findall(text.lower())]


def dominant_script(text: str) -> str:
    """The Unicode script most letters of `text` belong to (first word of their names: LATIN, CJK...)."""
    counts: Counter = Counter()
    for ch in text:
        if ch.isalpha():
            counts[unicodedata.name(ch, "UNKNOWN").split(" ")[0]] += 1
    return counts.most_common(1)[0][0] if counts else "NONE"


def language_of(text: str) -> str:
    """ISO 639-1 code py3langid gives `text`."""
    import py3langid  # lazy: loads its model (~0.5 s) on first use

    return py3langid.classify(text)[0]


def is_bad_output(response: str, finish_reason: str | None) -> bool:
    """Empty, or cut off by the token limit."""
    return not response.strip() or finish_reason == "length"


def prompt_nlls(model: Any, prompts: list[str], max_tokens: int) -> list[float]:
    """Mean per-token NLL (nats) of each prompt under `model` (a LoadedModel); prompts keep their end."""
    from lmopt.evaluate.loglik import loglikelihoods  # lazy: torch, only when the loss is measured

    tok = model.tokenizer
    texts = [p for p in prompts if p.strip()]
    counts = [min(len(ids), max_tokens) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    totals = loglikelihoods(model.model, tok, [("", t) for t in texts], max_length=max_tokens)
    return [-total / max(n, 1) for (total, _), n in zip(totals, counts, strict=True)]


def noise_floor(statistic: Callable[[Any, Any], float], ref: np.ndarray, cur: np.ndarray, permutations: int,
                seed: int) -> float:
    """Mean of `statistic` over shuffles of the pooled rows between two windows of the same sizes:
    the value the statistic takes by chance alone (rows: prompts, shape (n, ...))."""
    if permutations == 0:
        return 0.0
    pooled = np.concatenate([ref, cur])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(permutations):
        order = rng.permutation(len(pooled))
        values.append(statistic(pooled[order[:len(ref)]], pooled[order[len(ref):]]))
    return float(np.mean(values))



# --- windows -> features ---------------------------------------------------------------------------


@dataclass
class Features:
    """What the metrics need from one window, computed once (a monitor keeps the reference's)."""

    source: str
    n: int
    tokens: list[list[int]]
    scripts: list[str]
    languages: list[str]
    nll: list[float] | None
    output_lengths: list[int] | None
    bad_outputs: int | None
    feedback_rate: float | None
    ratings: list[float] | None


def features(window: Window, tokens: str = "hashed", model: Any = None, loss_prompts: int = 200,
             loss_max_tokens: int = 256) -> Features:
    """The window's per-prompt figures: `tokens` "hashed" or "model" (the model tokenizer's ids); the
    model's NLL on the last `loss_prompts` prompts only when `model` is given."""
    if tokens == "model" and model is None:
        raise LmoptError("drift: `tokens: model` needs the served model (give --model, or use tokens: hashed)")
    prompts = window.prompts
    if tokens == "model":
        tokens = list(model.tokenizer(prompts, add_special_tokens=False)["input_ids"]) if prompts else []
    else:
        tokens = [hashed_tokens(p) for p in prompts]
    nll = prompt_nlls(model, prompts[-loss_prompts:], loss_max_tokens) if model and prompts else None
    out_lengths = bad = None
    if window.responses is not None:
        finish = window.finish_reasons or [None] * len(window.responses)
        counted = window.completion_tokens or [None] * len(window.responses)
        out_lengths = [n if n is not None else len(hashed_tokens(r)) for r, n in zip(window.responses, counted,
                                                                                          strict=True)]
        bad = sum(is_bad_output(r, f) for r, f in zip(window.responses, finish, strict=True))
    rate = len(window.ratings) / len(prompts) if window.ratings is not None and prompts else None
    return Features(window.source, len(prompts), tokens, [dominant_script(p) for p in prompts],
                    [language_of(p) for p in prompts], nll, out_lengths, bad, rate, window.ratings)


def merge_features(parts: list[Features], source: str, ratings: list[float] | None = None) -> Features:
    """One window's features from those of its requests (a monitor computes each request's once);
    `ratings` are the window's ratings now (they keep arriving after a request is served)."""
    def joined(name: str) -> list | None:
        values = [getattr(p, name) for p in parts]
        return None if not parts or any(v is None for v in values) else [x for v in values for x in v]

    bad = [p.bad_outputs for p in parts]
    n = sum(p.n for p in parts)
    return Features(source, n, joined("tokens") or [], joined("scripts") or [], joined("languages") or [],
                    joined("nll"), joined("output_lengths"), None if None in bad or not parts else sum(bad),
                    len(ratings) / n if ratings is not None and n else None, ratings)
