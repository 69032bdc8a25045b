"""lmopt's C matmul kernels (compress/quantize/native.py, lmopt/native/qa8.c) against brute force:
the de-quantized weight times the activations rounded to int8 per block of 32, for 4- and 8-bit
codes, several group sizes and row counts; the AVX2 and portable builds too; and the layouts the
kernels refuse."""

from __future__ import annotations

import pytest
import torch

import lmopt.native
from lmopt.compress.quantize import native
from lmopt.compress.quantize.algorithms import dequantize, rtn_quantize
from lmopt.compress.quantize.runtime import QuantLinear
from lmopt.errors import LmoptError
from lmopt.hardware import cpu_flags

needs_kernel = pytest.mark.skipif(not native.available(),
                                  reason="lmopt's C kernels need a C compiler and AVX2 or AVX-512 VNNI")


def _round_activations(x: torch.Tensor) -> torch.Tensor:
    """What the kernel multiplies by: x (M, K) rounded per row and block of 32 to d * int8, with the
    kernel's float32 arithmetic (x * (127 / amax), not x / d: the two can round a tie differently)."""
    blocks = x.float().view(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    # a tensor divided by a tensor (127 / tensor would multiply by a reciprocal, another rounding)
    inv = torch.where(amax > 0, torch.full_like(amax, 127) / torch.where(amax > 0, amax, 1), 0)
    return (torch.round(blocks * inv) * (amax / 127)).view_as(x.float())


def _case(bits: int, group: int, n: int = 48, k: int = 160, seed: int = 0):
    torch.manual_seed(seed)
    qw = rtn_quantize(torch.randn(n, k) * 0.05, bits, group, sym=False)
    weight = dequantize(qw.q, qw.scale.half().float(), qw.zero, qw.group_size)  # fp16 scales, as stored
    return qw, weight


def _call(lib, x: torch.Tensor, kernel: dict) -> torch.Tensor:
    n, k = kernel["shape"]
    y = torch.empty(x.shape[0], n, dtype=torch.bfloat16)
    assert lib.lmopt_qa8_linear(x.data_ptr(), x.shape[0], k, kernel["bits"], kernel["wq"].data_ptr(),
                                kernel["ws"].data_ptr(), kernel["wz"].data_ptr(), n, y.data_ptr()) == 0
    return y


@needs_kernel
@pytest.mark.parametrize("bits,group,rows", [(4, 32, 1), (4, 64, 11), (4, 160, 2), (3, 32, 1), (8, 32, 1),
                                             (8, 160, 4), (6, 64, 1)])
def test_kernel_is_the_dequantized_weight_times_rounded_activations(bits, group, rows):
    qw, weight = _case(bits, group)
    kernel = native.pack_weights(qw.q, qw.scale, qw.zero, qw.group_size, bits)
    x = torch.randn(rows, 160).bfloat16()
    reference = _round_activations(x) @ weight.T  # fp32
    got = native.linear(x, kernel).float()
    # only float summation order and the bf16 output rounding differ
    torch.testing.assert_close(got, reference, rtol=8e-3, atol=1e-3)
    # and the rounding of activations is all that separates it from the bf16 reference
    assert (got - x.float() @ weight.T).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.parametrize("march,simd", [("x86-64", 0), ("x86-64-v3", 1)])
def test_builds_for_other_cpus_match_brute_force(tmp_path, march, simd):
    """The paths other CPUs run, built here for them: the portable loops (no AVX2) and the AVX2 path
    (no AVX-512 VNNI: maddubs on nibbles), over row counts that cover the multi-row and single-row
    loops and more than one chunk of 8 rows."""
    cc = lmopt.native.compiler()
    if cc is None:
        pytest.skip("no C compiler")
    if simd and not {"avx2", "fma", "f16c"} <= set(cpu_flags()):
        pytest.skip("this CPU cannot run an AVX2 build")
    flags = [f for f in lmopt.native.FLAGS if f != "-march=native"] + [f"-march={march}"]
    lib = lmopt.native.load(lmopt.native.build(cc, flags, tmp_path / f"{march}.so"))
    assert lib.lmopt_qa8_simd() == simd
    for bits, rows in ((4, 1), (4, 11), (8, 1), (8, 3)):
        qw, weight = _case(bits, 32, n=32, k=160, seed=bits + rows)
        kernel = native.pack_weights(qw.q, qw.scale, qw.zero, qw.group_size, bits)
        x = torch.randn(rows, 160).bfloat16()
        x[0, :32] = 0  # an all-zero block: d = 0
        torch.testing.assert_close(_call(lib, x, kernel).float(), _round_activations(x) @ weight.T,
                                   rtol=8e-3, atol=1e-3)


def test_layouts_the_kernels_refuse():
    assert native.kernel_for(4, 128, 576, 960) == "q4a8" and native.kernel_for(8, 576, 576, 49152) == "q8a8"
    assert native.kernel_for(4, 128, 576, 968) is None  # rows not in 16s
    assert native.kernel_for(4, 48, 576, 960) is None  # groups not whole blocks of 32
    assert native.kernel_for(4, 128, 560, 960) is None  # last group 48 columns
    assert native.kernel_for(1, 32, 64, 16) is None


@needs_kernel
def test_quant_linear_runs_the_kernel_explicitly_and_explains_a_refusal():
    qw, weight = _case(4, 32)
    layer = QuantLinear.from_codes(qw.q, qw.scale, qw.zero, 4, qw.group_size)
    assert layer.prepare("q4a8") == "q4a8" and layer.is_fast
    x = torch.randn(1, 160).bfloat16()
    torch.testing.assert_close(layer(x).float(), _round_activations(x) @ weight.T, rtol=8e-3, atol=1e-3)
    with pytest.raises(LmoptError, match="'q8a8' cannot run a 4-bit"):
        layer.prepare("q8a8")


def test_disabled_kernels_are_not_offered(monkeypatch):
    monkeypatch.setenv("LMOPT_NATIVE", "0")
    native.library.cache_clear()
    try:
        assert native.library() is None and not native.available()
        qw, _ = _case(4, 32)
        layer = QuantLinear.from_codes(qw.q, qw.scale, qw.zero, 4, qw.group_size)
        layer.prepare("auto")
        assert "q4a8" not in layer.kernel_candidates()
    finally:
        native.library.cache_clear()
