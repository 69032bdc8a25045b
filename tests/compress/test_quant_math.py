"""Pure quantization math on toy layers: grids, packing, GPTQ and AWQ against RTN, brute force checks."""

from __future__ import annotations

import itertools

import pytest
import torch

from lmopt.compress.quantize import algorithms as alg
from lmopt.compress.quantize.packing import pack_bits, packed_width, unpack_bits


def _toy(k: int = 96, n: int = 40, tokens: int = 512, seed: int = 0):
    """Correlated inputs with a few outlier channels (what real activations look like)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=gen) / k ** 0.5
    x = torch.randn(tokens, k, generator=gen) @ (torch.eye(k) + mix)
    x[:, :3] *= 8
    return x, torch.randn(n, k, generator=gen) * 0.1


@pytest.mark.parametrize("bits,group,sym", [(4, 32, False), (3, 40, False), (8, 0, True), (4, 0, True)])
def test_rtn_is_nearest_grid_point(bits, group, sym):
    """Brute force: every code is the nearest of all 2^bits levels of its group's grid."""
    _, w = _toy(k=100)
    qw = alg.rtn_quantize(w, bits, group, sym)
    g = qw.group_size
    assert qw.scale.shape == (40, -(-100 // g))  # ceil: a shorter last group when g does not divide 100
    scale, zero = alg.expand_groups(qw.scale, g, 100), alg.expand_groups(qw.zero, g, 100)
    levels = torch.arange(2 ** bits).float()
    values = (levels.view(1, 1, -1) - zero.unsqueeze(-1)) * scale.unsqueeze(-1)  # (N, K, levels)
    best = (values - w.unsqueeze(-1)).abs().min(-1).values  # distance to the nearest level
    chosen = values.gather(-1, qw.q.long().unsqueeze(-1)).squeeze(-1)
    assert ((chosen - w).abs() <= best + 1e-6).all()  # the code is a nearest level (ties either way)
    # no clamping happens inside the range, so every error is within half a step of its own group
    assert ((qw.dequantize() - w).abs() <= scale * 0.5001 + 1e-7).all()


def test_short_last_group_has_its_own_grid():
    w = torch.randn(4, 576)
    w[:, 512:] *= 0.01  # the 64-wide last group of 128-groups: tiny values
    qw = alg.rtn_quantize(w, 4, 128)
    assert qw.scale.shape == (4, 5)
    assert (qw.scale[:, 4] < qw.scale[:, :4].min() / 10).all()
    assert (qw.dequantize()[:, 512:] - w[:, 512:]).abs().max() < 0.01 * w.abs().max()


@pytest.mark.parametrize("sym", [False, True])
def test_clip_search_picks_the_best_shrink_by_brute_force(sym):
    torch.manual_seed(3)
    w = torch.randn(64, 32) * torch.rand(64, 1)
    w[::7, 5] *= 6  # rare extreme weights: shrinking the range pays off for these rows
    scale, zero = alg.grid_params(w, 4, sym, clip=0.3)

    def error(shrink):  # (rows,) brute force: quantize each row with its range times `shrink`
        s, z = alg._grid(w, shrink, 4, sym)
        return ((alg.quantize_codes(w, s, z, 4) - z) * s - w).abs().pow(2.4).sum(1)

    candidates = torch.stack([error(1 - i / 100) for i in range(31)])  # (31, rows)
    chosen = ((alg.quantize_codes(w, scale, zero, 4) - zero) * scale - w).abs().pow(2.4).sum(1)
    assert torch.allclose(chosen, candidates.min(0).values)
    assert (candidates.argmin(0) > 0).any()  # some rows really were clipped
    plain = alg.grid_params(w, 4, sym)
    assert torch.equal(alg.grid_params(w, 4, sym, clip=0.0)[0], plain[0])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packing_round_trip_and_size(bits):
    q = torch.randint(0, 2 ** bits, (7, 45), dtype=torch.uint8)
    packed = pack_bits(q, bits)
    assert packed.shape == (7, packed_width(45, bits)) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, bits, 45), q)


def test_four_bit_unpacking_reads_the_bits_one_by_one_as_packed():
    """`unpack_bits`' nibble path against brute force: value j of a row is bits 4j..4j+3 of the row's
    bytes read as one little-endian integer (the layout `pack_bits` writes)."""
    q = torch.randint(0, 16, (5, 45), dtype=torch.uint8)
    packed = pack_bits(q, 4)
    for row in range(5):
        as_int = int.from_bytes(bytes(packed[row].tolist()), "little")
        assert [(as_int >> (4 * j)) & 15 for j in range(45)] == unpack_bits(packed, 4, 45)[row].tolist()


@pytest.mark.parametrize("k,group", [(96, 32), (100, 32)])
def test_dequantize_equals_the_per_column_formula(k, group):
    """Whole groups are de-quantized by broadcasting (N, G, 1) parameters; the result must equal
    (q - zero) * scale with every parameter expanded to its columns, bit for bit."""
    q = torch.randint(0, 16, (7, k), dtype=torch.uint8)
    groups = -(-k // group)
    scale, zero = torch.rand(7, groups), torch.randint(0, 16, (7, groups)).float()
    columns = torch.arange(k) // group
    expected = (q.float() - zero[:, columns]) * scale[:, columns]
    assert torch.equal(alg.dequantize(q, scale, zero, group), expected)


def test_hessian_accumulates_the_mean_outer_product():
    x = torch.randn(3, 50, 16)
    h, n = None, 0
    for part in x:
        h, n = alg.accumulate_hessian(h, n, part)
    flat = x.reshape(-1, 16)
    torch.testing.assert_close(h, 2 * flat.t() @ flat / 150, rtol=1e-4, atol=1e-4)
    assert n == 150


@pytest.mark.parametrize("bits,group,act_order", itertools.product([4, 3], [32, 0], [False, True]))
def test_gptq_output_error_below_rtn(bits, group, act_order):
    x, w = _toy()
    h, _ = alg.accumulate_hessian(None, 0, x)
    rtn = alg.output_error(x, w, alg.rtn_quantize(w, bits, group).dequantize())
    gptq = alg.gptq_quantize(w, h, bits, group, block_size=32, act_order=act_order)
    assert alg.output_error(x, w, gptq.dequantize()) < 0.8 * rtn
    assert gptq.q.max() < 2 ** bits and gptq.scale.shape == alg.rtn_quantize(w, bits, group).scale.shape


def test_gptq_with_identity_hessian_is_rtn():
    """With uncorrelated unit inputs nothing can be compensated: GPTQ must round like RTN."""
    _, w = _toy()
    gptq = alg.gptq_quantize(w, torch.eye(96), 4, 32, damp=1e-6)
    assert torch.equal(gptq.q, alg.rtn_quantize(w, 4, 32).q)


@pytest.mark.parametrize("group,sym", [(32, False), (40, False), (32, True), (0, False)])
def test_refit_scales_is_the_least_squares_solution_by_brute_force(group, sym):
    """Against an explicit least-squares solve per row: A (K, G) with (q - zero) in each group's column,
    minimize ||X (w - A s)||^2 over the calibration inputs X (torch.linalg.lstsq on X A)."""
    x, w = _toy()
    h, _ = alg.accumulate_hessian(None, 0, x)
    qw = alg.gptq_quantize(w, h, 4, group, sym=sym, block_size=32)
    refit = alg.refit_scales(w, qw, h, ridge=0.0)
    k, g = w.shape[1], qw.group_size
    m = qw.q.float() - alg.expand_groups(qw.zero, g, k)
    onehot = torch.nn.functional.one_hot(torch.arange(k) // g).float()  # (K, G)
    for row in range(0, w.shape[0], 7):
        design = x @ (m[row].unsqueeze(1) * onehot)  # (tokens, G)
        expected = torch.linalg.lstsq(design.double(), (x @ w[row]).double().unsqueeze(1)).solution.squeeze(1)
        torch.testing.assert_close(refit.scale[row].double(), expected, rtol=2e-3, atol=1e-7)
    assert torch.equal(refit.q, qw.q) and torch.equal(refit.zero, qw.zero)
    assert alg.output_error(x, w, refit.dequantize()) <= alg.output_error(x, w, qw.dequantize())


def test_gptq_on_a_given_grid_with_identity_hessian_rounds_to_that_grid():
    """A given (scale, zero) per group is used as is: with nothing to compensate, every code is the
    nearest level of that grid (brute force over all 16 levels), not of the group's own min..max."""
    _, w = _toy()
    rtn = alg.rtn_quantize(w, 4, 32)
    scale, zero = rtn.scale * 0.8, (rtn.zero + 1).clamp(max=15)  # a grid GPTQ would never pick itself
    gptq = alg.gptq_quantize(w, torch.eye(96), 4, 32, damp=1e-6, grid=(scale, zero))
    levels = (torch.arange(16.0).view(1, 1, 16) - alg.expand_groups(zero, 32, 96).unsqueeze(-1)) \
        * alg.expand_groups(scale, 32, 96).unsqueeze(-1)  # (N, K, 16)
    nearest = (levels - w.unsqueeze(-1)).abs().argmin(-1)
    assert torch.equal(gptq.q.long(), nearest)
    assert torch.equal(gptq.scale, scale) and torch.equal(gptq.zero, zero)


@pytest.mark.parametrize("sym", [False, True])
def test_refine_gptq_rounds_lower_the_error_below_one_refit(sym):
    """One round is `refit_scales`; more rounds re-run GPTQ on the refit grid, and the output error on
    the calibration inputs (brute force) ends at or below one refit's, with codes that moved."""
    x, w = _toy()
    h, _ = alg.accumulate_hessian(None, 0, x)
    qw = alg.gptq_quantize(w, h, 4, 32, sym=sym, block_size=32, act_order=True)
    once = alg.refine_gptq(w, h, qw, 1)
    assert torch.equal(once.scale, alg.refit_scales(w, qw, h).scale) and torch.equal(once.q, qw.q)
    thrice = alg.refine_gptq(w, h, qw, 3, sym=sym, block_size=32, act_order=True)
    assert alg.output_error(x, w, thrice.dequantize()) < alg.output_error(x, w, once.dequantize())
    assert not torch.equal(thrice.q, qw.q)
    assert alg.output_error(x, w, once.dequantize()) <= alg.output_error(x, w, qw.dequantize())


@pytest.mark.parametrize("ridge", [0.0, 1e-6])
def test_refit_scales_keeps_the_scale_of_a_group_with_nothing_to_fit(ridge):
    """A group whose codes all sit on the zero point has no scale to fit: it keeps its own, and the
    row's other groups are still refit."""
    x, w = _toy()
    h, _ = alg.accumulate_hessian(None, 0, x)
    qw = alg.rtn_quantize(w, 4, 32)
    qw.q[0, :32] = qw.zero[0, 0].to(torch.uint8)
    refit = alg.refit_scales(w, qw, h, ridge=ridge)
    assert refit.scale[0, 0] == qw.scale[0, 0] and (refit.scale[0, 1:] != qw.scale[0, 1:]).all()
    assert alg.output_error(x, w, refit.dequantize()) < alg.output_error(x, w, qw.dequantize())


def test_awq_output_error_below_rtn_and_loss_is_exact():
    x, w = _toy()
    x_mean, (h, _) = x.abs().mean(0), alg.accumulate_hessian(None, 0, x)
    scales, loss = alg.awq_search_scales(x_mean, h / 2, [w], 4, 32)
    w_awq = alg.rtn_quantize(w * scales, 4, 32).dequantize() / scales
    # the Hessian shortcut equals the brute-force output error (per output row)
    assert loss == pytest.approx(alg.output_error(x, w, w_awq), rel=1e-3)
    rtn = alg.output_error(x, w, alg.rtn_quantize(w, 4, 32).dequantize())
    assert alg.output_error(x, w, w_awq) < 0.9 * rtn


def test_smoothquant_moves_outliers_into_weights():
    x, w = _toy()
    s = alg.smoothquant_scales(x.abs().amax(0), [w], alpha=0.5)
    torch.testing.assert_close((x / s) @ (w * s).t(), x @ w.t(), rtol=1e-4, atol=1e-4)
    spread = lambda t: float(t.abs().amax(0).max() / t.abs().amax(0).median())  # noqa: E731
    assert spread(x / s) < spread(x) / 2


@pytest.mark.parametrize("bits,group", [(4, 32), (8, 96), (3, 64)])
def test_blockwise_dequantize_matches_the_whole_matrix_formula(bits, group, monkeypatch):
    """QuantLinear de-quantizes in row blocks (to bound memory); the result must equal the
    whole-matrix (q - zero) * scale, in fp32 and rounded once to bf16, for any block size."""
    from lmopt.compress.quantize import runtime
    torch.manual_seed(0)
    w = torch.randn(37, 160)  # 160 = 5 x 32; with group 96 the last group is short (64)
    qw = alg.rtn_quantize(w, bits, group)
    layer = runtime.QuantLinear.from_codes(qw.q, qw.scale, qw.zero, bits, qw.group_size)
    reference = alg.dequantize(qw.q, qw.scale.half().float(), qw.zero, qw.group_size)
    monkeypatch.setattr(runtime, "DEQUANT_BLOCK", 160 * 5)  # 5 rows a block, the last one 2 rows
    assert torch.equal(layer.dequantize(torch.float32), reference)
    assert torch.equal(layer.dequantize(torch.bfloat16), reference.to(torch.bfloat16))


def test_per_call_dequantized_linear_in_output_blocks_equals_one_matmul(monkeypatch):
    """Without a dense copy, a large layer is de-quantized and multiplied a block of output rows at a
    time (memory); each output is the same dot product as with the whole weight."""
    from lmopt.compress.quantize import runtime
    torch.manual_seed(0)
    qw = alg.rtn_quantize(torch.randn(50, 64), 4, 32)
    layer = runtime.QuantLinear.from_codes(qw.q, qw.scale, qw.zero, 4, 32)  # backend dequant: per call
    x = torch.randn(3, 5, 64)
    whole = torch.nn.functional.linear(x, layer.dequantize())
    monkeypatch.setattr(runtime, "DEQUANT_BLOCK", 64 * 8)  # 8 output rows a block, the last one 2
    blocked = layer(x)
    assert blocked.shape == (3, 5, 50)
    torch.testing.assert_close(blocked, whole, rtol=1e-4, atol=1e-5)  # GEMM summation order differs
