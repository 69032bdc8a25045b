"""Deduplication checked against references: datasketch's MinHash and LSH parameters, exact Jaccard."""

from __future__ import annotations

import random

import numpy as np

from lmopt.data.dedup import (
    NearDeduper,
    SemanticDeduper,
    exact_key,
    jaccard_estimate,
    lsh_params,
    minhash_signature,
    shingle_hashes,
)
from lmopt.data.normalize import canonical_words, ngrams
from lmopt.data.planted import near_copy


def test_exact_key_ignores_case_spacing_punctuation():
    assert exact_key("Hello,  World!\n") == exact_key("hello world")
    assert exact_key("hello world") != exact_key("hello worlds")


def test_signature_equals_datasketch_on_the_same_shingles(docs):
    from datasketch import MinHash

    ref = MinHash(num_perm=64, seed=3, hashfunc=int)
    ref.update_batch(shingle_hashes(docs[0], 3).tolist())
    assert np.array_equal(minhash_signature(docs[0], 3, 64, 3), ref.hashvalues)


def test_jaccard_estimate_tracks_exact_jaccard(docs):
    rng = random.Random(0)
    errors = []
    for doc in docs[:40]:
        copy = near_copy(doc, rng, 0.05)
        a, b = set(ngrams(canonical_words(doc), 3)), set(ngrams(canonical_words(copy), 3))
        exact = len(a & b) / len(a | b)
        errors.append(jaccard_estimate(minhash_signature(doc), minhash_signature(copy)) - exact)
    assert abs(np.mean(errors)) < 0.03 and np.std(errors) < 0.06  # 128 perms: sd about 0.04


def test_lsh_params_match_datasketch():
    from datasketch.lsh import _optimal_param

    for threshold, perms in ((0.7, 128), (0.8, 128), (0.5, 64), (0.9, 256)):
        assert lsh_params(threshold, perms) == _optimal_param(threshold, perms, 0.5, 0.5)


def test_near_deduper_keeps_first_of_each_cluster(docs):
    rng = random.Random(1)
    index = NearDeduper(threshold=0.7)
    assert [index.check(minhash_signature(d), i) for i, d in enumerate(docs)] == [None] * len(docs)
    checked = 0
    for i, doc in enumerate(docs[:30]):
        copy = near_copy(doc, rng, 0.03)
        a, b = set(ngrams(canonical_words(doc), 3)), set(ngrams(canonical_words(copy), 3))
        exact = len(a & b) / len(a | b)
        if abs(exact - 0.7) < 0.1:
            continue  # near the threshold the estimate may fall either way
        checked += 1
        assert (index.check(minhash_signature(copy), 100 + i) == i) == (exact > 0.7), exact
    assert checked >= 20


def test_semantic_deduper_cosine():
    index = SemanticDeduper(threshold=0.95)
    assert index.check(np.array([1.0, 0.0, 0.0]), "a") is None
    assert index.check(np.array([0.0, 1.0, 0.0]), "b") is None
    assert index.check(np.array([0.99, 0.05, 0.0]), "c") == "a"
