"""Unicode normalization and whitespace repair, and the canonical form used for hashing and n-grams.

`normalize_text` changes what is written out (NFC/NFKC, control and zero-width characters removed,
odd spaces made plain, trailing spaces and runs of blank lines trimmed). `canonical_words` is only
for comparison: lower-cased words without punctuation, so that copies differing in case, spacing or
punctuation hash alike (exact dedup, MinHash shingles, decontamination n-grams). `ngram_hashes`
hashes each word once (xxh64, the same in every process) and combines n-grams with numpy.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import xxhash

# Zero-width and formatting characters that carry no text (ZWSP, ZWNJ, ZWJ, word joiner, BOM, soft hyphen).
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
# Every other Unicode space separator (NBSP, thin space, ideographic space...) becomes a plain space.
_SPACES = re.compile(r"[^\S\n\t]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_RUN_OF_SPACES = re.compile(r"[ \t]{2,}")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")


def normalize_text(text: str, form: str = "NFC") -> str:
    """Normalize Unicode (`form`: NFC, NFKC or "none") and repair whitespace; see the module docstring."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if form != "none":
        text = unicodedata.normalize(form, text)
    text = text.translate(_INVISIBLE)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _RUN_OF_SPACES.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def canonical_words(text: str) -> list[str]:
    """Lower-cased word tokens (`\\w+`, so punctuation and spacing are ignored)."""
    return _WORD.findall(text.lower())


def ngrams(words: list[str], n: int) -> list[str]:
    """Word n-grams as space-joined strings; a text shorter than n gives one n-gram of all its words."""
    if len(words) <= n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def _splitmix64(count: int, seed: int = 0x5EED) -> np.ndarray:
    out, x, mask = [], seed, (1 << 64) - 1
    for _ in range(count):
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append((z ^ (z >> 31)) | 1)  # odd, so multiplying is a bijection modulo 2**64
    return np.array(out, dtype=np.uint64)


MAX_NGRAM = 64
_MULTIPLIERS = _splitmix64(MAX_NGRAM)  # one per position in the n-gram: "a b" and "b a" differ


def word_hashes(words: list[str]) -> np.ndarray:
    """(len(words),) uint64 xxh64 of each word: the same in every process."""
    return np.fromiter((xxhash.xxh64_intdigest(word.encode()) for word in words), dtype=np.uint64,
                       count=len(words))


def ngram_hashes(words: list[str] | np.ndarray, n: int) -> np.ndarray:
    """(max(len(words) - n + 1, 1),) uint64 hashes of the word n-grams; fewer than n words: one of all.

    `words` may be the `word_hashes` of the words already. Equal n-grams hash equal in every
    process; distinct ones collide with probability about 2**-64.
    """
    if not len(words):
        return np.zeros(0, dtype=np.uint64)
    if n > MAX_NGRAM:
        raise ValueError(f"n-grams of at most {MAX_NGRAM} words")
    w = words if isinstance(words, np.ndarray) else word_hashes(words)
    n = min(n, len(w))
    count = len(w) - n + 1
    h = np.zeros(count, dtype=np.uint64)
    for i in range(n):  # wraps modulo 2**64 on purpose
        h += w[i:i + count] * _MULTIPLIERS[i]
    return h ^ (h >> np.uint64(29))  # fold high bits down: the low bits of a product mix poorly
