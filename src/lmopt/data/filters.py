"""Quality rules in the style of Gopher (MassiveText) and C4, each failing rule named as the reason.

`quality_reason(text, cfg)` returns the first rule a document breaks (e.g. `gopher_word_count`) or
None. `strip_boilerplate(text)` drops C4's policy-notice lines and returns the rest. Rules and
thresholds follow Rae et al. 2021 (table A1) and datatrove's implementation of them.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

from lmopt.data.config import QualityConfig
from lmopt.data.normalize import ngram_hashes, word_hashes
from lmopt.errors import missing_dependency

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "●", "○", "▪", "‣", "⁃", "◦", "-", "*", "–")
ELLIPSES = ("...", "…")
# Gopher table A1: (n, largest share of characters). Top n-gram for n=2..4, all duplicated n-grams for 5..10.
TOP_NGRAM = ((2, 0.20), (3, 0.18), (4, 0.16))
DUP_NGRAM = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
REPETITION = {"dup_line_frac": 0.30, "dup_para_frac": 0.30, "dup_line_char_frac": 0.20,
              "dup_para_char_frac": 0.20}
# C4 removed lines with these policy notices; it also removed every line with "javascript", which
# would gut programming text, so only the "enable javascript" notices are taken here.
BOILERPLATE = re.compile(r"terms of use|privacy policy|cookie policy|uses cookies|use of cookies|use cookies|"
                         r"enable javascript|javascript is disabled|javascript must be enabled|"
                         r"all rights reserved", re.IGNORECASE)
_BOILERPLATE_TRIGGERS = ("terms of use", "privacy policy", "cookie", "javascript", "all rights reserved")
_SYMBOL_WORD = re.compile(r"^[^\w]+$")


def strip_boilerplate(text: str) -> tuple[str, int]:
    """Drop C4 boilerplate lines; return the text and how many lines went."""
    low = text.lower()
    if not any(t in low for t in _BOILERPLATE_TRIGGERS):
        return text, 0  # the common case, without a regex pass per line
    lines = text.split("\n")
    kept = [line for line in lines if not BOILERPLATE.search(line)]
    return "\n".join(kept).strip(), len(lines) - len(kept)


def quality_reason(text: str, cfg: QualityConfig) -> str | None:
    """The first quality rule `text` breaks, or None when it passes them all."""
    if "lorem ipsum" in text.lower() and cfg.boilerplate_lines:
        return "c4_lorem_ipsum"
    words = text.split()
    reason = _gopher_quality(text, words, cfg)
    if reason is None and cfg.repetition:
        reason = _gopher_repetition(text, words)
    if reason is None and cfg.language:
        reason = _language(text, cfg)
    return reason


def _gopher_quality(text: str, words: list[str], cfg: QualityConfig) -> str | None:
    # Word count and mean length ignore pure-symbol tokens ("-", "|"), as Gopher does.
    real = [w for w in words if not _SYMBOL_WORD.match(w)]
    if not cfg.min_words <= len(real) <= cfg.max_words:
        return "gopher_word_count"
    mean_len = sum(map(len, real)) / max(len(real), 1)
    if real and not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
        return "gopher_mean_word_length"
    n = max(len(words), 1)
    if (text.count("#") + sum(text.count(e) for e in ELLIPSES)) / n > cfg.max_symbol_ratio:
        return "gopher_symbol_ratio"
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if lines and sum(ln.lstrip().startswith(BULLETS) for ln in lines) / len(lines) > cfg.max_bullet_lines:
        return "gopher_bullet_lines"
    if lines and sum(ln.rstrip().endswith(ELLIPSES) for ln in lines) / len(lines) > cfg.max_ellipsis_lines:
        return "gopher_ellipsis_lines"
    # A word with a cased letter differs from its upper case; only the rest need a per-character look.
    alpha = sum(1 for w in words if w.lower() != w.upper() or any(c.isalpha() for c in w))
    if words and alpha / len(words) < cfg.min_alpha_words:
        return "gopher_alpha_words"
    if cfg.min_stop_words and sum(w.lower() in STOP_WORDS for w in words) < cfg.min_stop_words:
        return "gopher_stop_words"
    return None


def _dup_fraction(parts: list[str]) -> tuple[float, float]:
    """Share of parts (lines or paragraphs) that repeat an earlier one, and of their characters."""
    seen: set[str] = set()
    dup, dup_chars = 0, 0
    for part in parts:
        if part in seen:
            dup, dup_chars = dup + 1, dup_chars + len(part)
        seen.add(part)
    return dup / max(len(parts), 1), dup_chars / max(sum(map(len, parts)), 1)


class _NGrams:
    """Word n-grams of one document as 64-bit hashes, with each n-gram's length in characters."""

    def __init__(self, words: list[str]) -> None:
        self.hashes = word_hashes(words)  # (words,)
        self.ends = np.concatenate([[0], np.cumsum([len(w) for w in words])])  # (words + 1,)

    def grams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(count,) hashes and (count,) character lengths (words plus joining spaces) of the n-grams."""
        count = len(self.hashes) - n + 1
        return ngram_hashes(self.hashes, n), self.ends[n:n + count] - self.ends[:count] + (n - 1)


def _top_ngram_chars(ng: _NGrams, n: int) -> int:
    """Characters covered by the most frequent n-gram (its length times its count), when it repeats."""
    if len(ng.hashes) < n:
        return 0
    hashes, lengths = ng.grams(n)
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    top = int(np.argmax(counts))
    return int(lengths[first[top]] * counts[top]) if counts[top] > 1 else 0


def _dup_ngram_chars(ng: _NGrams, n: int) -> int:
    """Characters in n-grams repeating an earlier one, skipping past each repeat (datatrove's way)."""
    if len(ng.hashes) < n:
        return 0
    hashes, lengths = ng.grams(n)
    if len(np.unique(hashes)) == len(hashes):
        return 0  # no n-gram repeats: the common case, without the Python loop
    seen: set[int] = set()
    chars, i, hl = 0, 0, hashes.tolist()
    while i < len(hl):
        if hl[i] in seen:
            chars, i = chars + int(lengths[i]), i + n
        else:
            seen.add(hl[i])
            i += 1
    return chars


def _gopher_repetition(text: str, words: list[str]) -> str | None:
    paras = [p for p in re.split(r"\n{2,}", text) if p.strip()]
    lines = [ln for ln in text.split("\n") if ln.strip()]
    para_frac, para_chars = _dup_fraction(paras)
    line_frac, line_chars = _dup_fraction(lines)
    if para_frac > REPETITION["dup_para_frac"] or para_chars > REPETITION["dup_para_char_frac"]:
        return "gopher_repeated_paragraphs"
    if line_frac > REPETITION["dup_line_frac"] or line_chars > REPETITION["dup_line_char_frac"]:
        return "gopher_repeated_lines"
    total, ng = max(len(text), 1), _NGrams(words)
    for n, limit in TOP_NGRAM:
        if _top_ngram_chars(ng, n) / total > limit:
            return f"gopher_top_{n}gram"
    for n, limit in DUP_NGRAM:
        if _dup_ngram_chars(ng, n) / total > limit:
            return f"gopher_dup_{n}gram"
    return None


@lru_cache(maxsize=1)
def _language_identifier() -> Any:
    try:  # lazy: treated as optional (a clear error when missing), needed by the language filter only
        from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier
    except ImportError:
        raise missing_dependency("py3langid") from None
    return LanguageIdentifier.from_model_file(MODEL_DIR / MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the first 2,000 characters, by py3langid's packaged model."""
    lang, prob = _language_identifier().classify(text[:2000])
    return lang, float(prob)


def _language(text: str, cfg: QualityConfig) -> str | None:
    lang, prob = detect_language(text)
    return None if lang == cfg.language and prob >= cfg.min_language_score else "language"
