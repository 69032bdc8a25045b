"""The Ray engine's vectorized dedup pieces against brute force (pure numpy: no Ray cluster needed).

- `band_buckets`: documents share a bucket exactly when they share a band's values (checked against
  grouping by the band bytes themselves).
- `_star_edges`: over a group holding many buckets at once, the edges connect exactly the documents a
  per-bucket loop connects (same connected components, no self edges).
- `_dedup_components`: several components in one group give the verdicts each component gives alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from lmopt.data.config import DedupConfig
from lmopt.data.dedup import lsh_params
from lmopt.data.ray_dedup import EXACT, NEAR, _dedup_components, _star_edges, band_buckets


def _components(pairs: set[tuple[int, int]], nodes: set[int]) -> set[frozenset[int]]:
    parent = {n: n for n in nodes}

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    groups: dict[int, set[int]] = {}
    for n in nodes:
        groups.setdefault(find(n), set()).add(n)
    return {frozenset(g) for g in groups.values()}


def test_band_buckets_equal_exactly_when_the_band_values_are_equal():
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 50, size=(300, 6, 2), dtype=np.uint32)  # small values: many equal bands
    sigs[100:110] = sigs[0]  # whole-signature copies
    buckets = band_buckets(sigs)
    assert buckets.shape == (300, 6) and buckets.dtype == np.uint64
    for band in range(6):
        by_values: dict[bytes, set[int]] = {}
        by_bucket: dict[int, set[int]] = {}
        for doc in range(300):
            by_values.setdefault(sigs[doc, band].tobytes(), set()).add(doc)
            by_bucket.setdefault(int(buckets[doc, band]), set()).add(doc)
        assert sorted(map(sorted, by_values.values())) == sorted(map(sorted, by_bucket.values()))
    # the same values in different bands are different buckets
    same = np.zeros((1, 2, 3), dtype=np.uint32)
    assert band_buckets(same)[0, 0] != band_buckets(same)[0, 1]


def test_star_edges_connect_what_a_per_bucket_loop_connects():
    rng = np.random.default_rng(1)
    bucket = rng.integers(0, 40, size=500).astype(np.int64)
    order = rng.integers(0, 200, size=500).astype(np.int64)
    out = _star_edges({"bucket": bucket, "order": order})
    got = set(zip(out["a"].tolist(), out["b"].tolist(), strict=True))
    assert all(a != b for a, b in got)
    expected: set[tuple[int, int]] = set()
    for key in np.unique(bucket):
        docs = sorted(set(order[bucket == key].tolist()))
        expected |= {(docs[0], d) for d in docs[1:]}  # the loop the vectorized version replaced
    assert got == expected
    nodes = set(order.tolist())
    assert _components(got, nodes) == _components(expected, nodes)


@pytest.mark.parametrize("mode", ["exact", "near"])
def test_components_in_one_group_get_the_verdicts_each_gets_alone(mode):
    d = DedupConfig(mode=mode)
    bands, rows = lsh_params(d.threshold, d.num_perm)
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2**32, size=(3, d.num_perm), dtype=np.uint32)
    # component 0: a document, an exact copy and a near copy (one band changed); component 1: two
    # documents sharing only one band (a candidate, but below the Jaccard threshold)
    near = base[0].copy()
    near[bands * rows - rows:] += 1
    other = base[2].copy()
    other[rows:] += 1
    sigs = [base[0], base[0], near, base[2], other]
    keys = [b"k0", b"k0", b"k1", b"k2", b"k3"]
    group = {"order": np.array([10, 30, 40, 20, 50]), "line": np.array([1, 3, 4, 2, 5]),
             "key": np.array(keys, dtype=object), "sig": np.array([s.tobytes() for s in sigs], dtype=object),
             "component": np.array([0, 0, 0, 1, 1])}
    together = _dedup_components(group, d)
    alone = [_dedup_components({k: v[group["component"] == c] for k, v in group.items()}, d) for c in (0, 1)]
    for col in ("order", "code", "of_line"):
        assert sorted(together[col].tolist()) == sorted(np.concatenate([a[col] for a in alone]).tolist())
    verdicts = dict(zip(together["order"].tolist(), zip(together["code"].tolist(), together["of_line"].tolist(),
                                                          strict=True), strict=True))
    expected = {30: (EXACT, 1)} | ({40: (NEAR, 1)} if mode == "near" else {})
    assert verdicts == expected
