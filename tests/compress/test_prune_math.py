"""Toy-layer checks of the pruning math: masks, Wanda, SparseGPT against a brute-force OBS reference."""

from __future__ import annotations

import pytest
import torch

from lmopt.compress.prune.math import (
    add_input_stats,
    layer_output_error,
    magnitude_scores,
    nm_mask,
    parse_pattern,
    sparsegpt_prune_weight,
    sparsity_mask,
    wanda_scores,
)


def outlier_data(tokens: int = 2048, d_in: int = 64, d_out: int = 48, seed: int = 0):
    """Inputs with a few outlier features (about 50x larger), as LLM activations have."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_in, generator=g)
    x[:, [3, d_in // 3 + 1, d_in - 2]] *= 50.0
    w = torch.randn(d_out, d_in, generator=g)
    return x, w


def stats(x: torch.Tensor):
    h = torch.zeros(x.shape[1], x.shape[1])
    sq = torch.zeros(x.shape[1])
    count = add_input_stats(h, sq, 0, x[:1000])
    count = add_input_stats(h, sq, count, x[1000:])
    return h, sq, count


def brute_force_sparsegpt(w, h, sparsity, pattern, blocksize, damp=0.01):
    """SparseGPT written from the paper with explicit inverses of H restricted to the unvisited columns."""
    w, h = w.clone().double(), h.clone().double()
    cols = h.shape[0]
    h += damp * torch.diag(h).mean() * torch.eye(cols, dtype=h.dtype)
    inv_tail = [torch.linalg.inv(h[i:, i:]) for i in range(cols)]  # inv(H_R) once columns < i are fixed
    d = torch.tensor([inv_tail[i][0, 0].sqrt() for i in range(cols)], dtype=h.dtype)
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i in range(cols):
        if pattern is None and i % blocksize == 0:
            blk = slice(i, min(i + blocksize, cols))
            mask[:, blk] = sparsity_mask(w[:, blk].pow(2) / d[blk].pow(2), sparsity)
        if pattern is not None and i % pattern[1] == 0:
            grp = slice(i, i + pattern[1])
            mask[:, grp] = nm_mask(w[:, grp].pow(2) / d[grp].pow(2), *pattern)
        drop = mask[:, i]
        # OBS: removing w_i moves the unvisited weights by -w_i / [H_R^-1]_00 * [H_R^-1]_0,:
        w[drop, i:] -= (w[drop, i] / inv_tail[i][0, 0]).unsqueeze(1) * inv_tail[i][0].unsqueeze(0)
        w[drop, i] = 0
    return w.float(), mask


def test_parse_pattern():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern(None) is None
    for bad in ("4:2", "2-4", "a:b", "0:4"):
        with pytest.raises(ValueError):
            parse_pattern(bad)


def test_masks_hit_the_requested_sparsity():
    scores = torch.rand(16, 32)
    assert sparsity_mask(scores, 0.5).sum() == 16 * 16
    row_mask = sparsity_mask(scores, 0.25, per_row=True)
    assert (row_mask.sum(1) == 8).all()
    # the removed weights are the lowest of each row
    assert (scores[row_mask].view(16, 8).max(1).values <= scores[~row_mask].view(16, 24).min(1).values).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_mask_keeps_n_largest_of_every_m(n, m):
    scores = torch.rand(8, 32)
    mask = nm_mask(scores, n, m)
    groups = mask.view(8, -1, m)
    assert ((~groups).sum(-1) == n).all()
    kept_min = scores.view(8, -1, m).masked_fill(groups, float("inf")).min(-1).values
    dropped_max = scores.view(8, -1, m).masked_fill(~groups, -float("inf")).max(-1).values
    assert (dropped_max <= kept_min).all()


def test_wanda_matches_reference_formula():
    x, w = outlier_data()
    _, sq, _ = stats(x)
    expected = w.abs() * x.norm(dim=0).unsqueeze(0)  # Wanda: |W| * ||X_j||_2
    torch.testing.assert_close(wanda_scores(w, sq), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("pattern", [None, (2, 4), (4, 8)])
def test_sparsegpt_matches_brute_force_obs(pattern):
    x, w = outlier_data(tokens=512, d_in=24, d_out=6)
    h, _, _ = stats(x)
    new, mask = sparsegpt_prune_weight(w, h, 0.5, pattern, blocksize=8)
    ref, ref_mask = brute_force_sparsegpt(w, h, 0.5, pattern, blocksize=8)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(new, ref, rtol=1e-3, atol=1e-3)
    assert (new[mask] == 0).all() and mask.float().mean() == 0.5


@pytest.mark.parametrize("pattern", [None, (2, 4), (4, 8)])
def test_wanda_and_sparsegpt_beat_magnitude_on_outlier_features(pattern):
    x, w = outlier_data()
    h, sq, _ = stats(x)

    def masked(scores):
        mask = nm_mask(scores, *pattern) if pattern else sparsity_mask(scores, 0.5, per_row=scores is not mag)
        return w.masked_fill(mask, 0)

    mag = magnitude_scores(w)
    err_mag = layer_output_error(w, masked(mag), x)
    err_wanda = layer_output_error(w, masked(wanda_scores(w, sq)), x)
    new, mask = sparsegpt_prune_weight(w, h, 0.5, pattern)
    err_sgpt = layer_output_error(w, new, x)
    assert mask.float().mean() == 0.5
    assert err_wanda < 0.5 * err_mag
    assert err_sgpt < err_wanda


def test_sparsegpt_is_bounded_by_the_least_squares_optimum_for_its_mask():
    x, w = outlier_data(d_in=32, d_out=8)
    h, _, _ = stats(x)
    new, mask = sparsegpt_prune_weight(w, h, 0.5, blocksize=32, damp=1e-6)
    err = layer_output_error(w, new, x)
    exact = w.clone()
    for r in range(w.shape[0]):  # per row: keep = argmin ||X_k v - X w||^2
        keep = ~mask[r]
        exact[r] = 0
        exact[r, keep] = torch.linalg.lstsq(x[:, keep].double(), (x @ w[r]).double()).solution.float()
    err_exact = layer_output_error(w, exact, x)
    err_no_update = layer_output_error(w, w.masked_fill(mask, 0), x)
    assert err_exact <= err * 1.001 and err < err_no_update


def test_dead_inputs_are_pruned_first():
    x, w = outlier_data(d_in=16, d_out=4)
    x[:, 5] = 0
    h, _, _ = stats(x)
    new, mask = sparsegpt_prune_weight(w, h, 0.25)
    assert mask[:, 5].all() and (new[:, 5] == 0).all()
