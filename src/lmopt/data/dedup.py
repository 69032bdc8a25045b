"""Deduplication: exact (hash of the canonical words), near (MinHash + LSH), semantic (embeddings).

Signatures are computed per document (in worker processes); the indexes below live in the main
process and are the only state that grows with the corpus. Streaming keeps the first document of
each cluster: a document is dropped when it matches one already kept.

Near duplicates: datasketch MinHash signatures over word n-gram shingles; LSH bands with the (b, r)
that datasketch chooses for the threshold; a band hit is confirmed by the signatures' estimated
Jaccard similarity, so LSH's false positives below the threshold are not removed. The index stores
one 64-bit key per band and the uint32 signature of each kept document: about 1.8 kB per kept
document at the defaults (128 permutations, threshold 0.7: 14 bands of 9 rows), growth slack included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from lmopt.data.normalize import canonical_words, ngram_hashes, word_hashes
from lmopt.models import load_model


def exact_key(text: str) -> bytes:
    """16-byte hash of the canonical words: copies differing only in case, spacing, punctuation collide."""
    return hashlib.blake2b(" ".join(canonical_words(text)).encode(), digest_size=16).digest()


@lru_cache(maxsize=4)
def _permutations(num_perm: int, seed: int) -> Any:
    from datasketch import MinHash  # lazy: ~0.4 s; data.stats imports this module at CLI start-up

    template = MinHash(num_perm=num_perm, seed=seed)
    return template.permutations, template.scheme


def shingle_hashes(text: str, ngram: int = 3, words: np.ndarray | None = None) -> np.ndarray:
    """Distinct 32-bit hashes of the canonical-word `ngram` shingles of `text` (fewer words: one shingle).

    `words`: the `word_hashes` of `canonical_words(text)`, when the caller has them already.
    """
    words = word_hashes(canonical_words(text)) if words is None else words
    return np.unique(ngram_hashes(words, ngram) >> np.uint64(32))


def minhash_signature(text: str, ngram: int = 3, num_perm: int = 128, seed: int = 1,
                      words: np.ndarray | None = None) -> np.ndarray:
    """(num_perm,) uint32 datasketch MinHash signature of the word-`ngram` shingle set of `text`."""
    from datasketch import MinHash  # lazy: ~0.4 s; data.stats imports this module at CLI start-up

    perms, scheme = _permutations(num_perm, seed)
    mh = MinHash(num_perm=num_perm, seed=seed, hashfunc=int, permutations=perms, scheme=scheme)
    hashes = shingle_hashes(text, ngram, words)
    if len(hashes):
        mh.update_batch(hashes.tolist())
    return mh.hashvalues.astype(np.uint32, copy=False)  # datasketch's affine32 scheme: 32-bit values


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    """MinHash estimate of the Jaccard similarity: the share of equal signature entries."""
    return float(np.mean(a == b))


@lru_cache(maxsize=16)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted false-positive + false-negative probability mass.

    The rule of datasketch's `MinHashLSH` (its `_optimal_param`), integrated with numpy here because
    datasketch's version imports scipy (seconds per worker process); a test checks they agree.
    """
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only the old name
    s_lo, s_hi = np.linspace(0.0, threshold, 1001), np.linspace(threshold, 1.0, 1001)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = trapezoid(1 - (1 - s_lo ** r) ** b, s_lo)
            fn = trapezoid((1 - s_hi ** r) ** b, s_hi)
            err = fp_weight * fp + (1 - fp_weight) * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


class NearDeduper:
    """Streaming MinHash LSH index: `check(sig)` returns the id of a kept near-duplicate, or keeps `sig`."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128) -> None:
        self.threshold, self.num_perm = threshold, num_perm
        self.bands, self.rows = lsh_params(threshold, num_perm)
        # band key -> kept index, or a list of them once a bucket holds two (most hold one: an int
        # costs about 90 bytes less than a one-element list, per band and kept document)
        self.tables: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self.sigs = np.zeros((1024, num_perm), dtype=np.uint32)  # (kept, num_perm), grown by doubling
        self.ids: list[Any] = []

    def _band_keys(self, sig: np.ndarray) -> list[int]:
        # (bands, rows) -> one 64-bit key per band
        bands = sig[: self.bands * self.rows].reshape(self.bands, self.rows)
        return [int.from_bytes(hashlib.blake2b(b.tobytes(), digest_size=8).digest(), "little") for b in bands]

    def check(self, sig: np.ndarray, doc_id: Any = None) -> Any | None:
        """The id of a kept document with Jaccard >= threshold to `sig`, or None (and `sig` is kept)."""
        keys = self._band_keys(sig)
        seen: set[int] = set()
        for table, key in zip(self.tables, keys, strict=True):
            bucket = table.get(key)
            if bucket is None:
                continue
            for idx in (bucket,) if isinstance(bucket, int) else bucket:
                if idx not in seen:
                    seen.add(idx)
                    if jaccard_estimate(self.sigs[idx], sig) >= self.threshold:
                        return self.ids[idx]
        idx = len(self.ids)
        if idx == len(self.sigs):
            self.sigs = np.concatenate([self.sigs, np.zeros_like(self.sigs)])
        self.sigs[idx] = sig
        self.ids.append(doc_id if doc_id is not None else idx)
        for table, key in zip(self.tables, keys, strict=True):
            bucket = table.get(key)
            if bucket is None:
                table[key] = idx
            elif isinstance(bucket, int):
                table[key] = [bucket, idx]
            else:
                bucket.append(idx)
        return None

    def __len__(self) -> int:
        return len(self.ids)


class SemanticDeduper:
    """Cosine similarity of L2-normalized embeddings against every kept one (quadratic: small datasets)."""

    def __init__(self, threshold: float = 0.95) -> None:
        self.threshold = threshold
        self.vectors: np.ndarray | None = None  # (kept, dim)
        self.ids: list[Any] = []

    def check(self, vector: np.ndarray, doc_id: Any = None) -> Any | None:
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        if self.vectors is not None:
            sims = self.vectors @ vector  # (kept,)
            best = int(np.argmax(sims))
            if sims[best] >= self.threshold:
                return self.ids[best]
        row = vector[None].astype(np.float32)
        self.vectors = row if self.vectors is None else np.concatenate([self.vectors, row])
        self.ids.append(doc_id if doc_id is not None else len(self.ids))
        return None


def model_embedder(ref: str, batch_size: int = 8, max_tokens: int = 256) -> Callable[[list[str]], np.ndarray]:
    """`embed(texts) -> (n, hidden)`: mean-pooled last hidden states of a model lmopt loads."""
    import torch  # lazy: only semantic dedup needs torch (~1 s); cleaning runs without it

    loaded = load_model(ref, dtype="float32")
    model, tok = loaded.model.eval(), loaded.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    @torch.no_grad()
    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            batch = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_tokens)
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1]  # (b, seq, hidden)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, seq, 1)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), dtype=np.float32)

    return embed
