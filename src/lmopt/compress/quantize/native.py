"""The `q4a8` and `q8a8` paths: 4- and 8-bit weights x int8 activations, lmopt's C kernel (lmopt/native/qa8.c).

torch ships no CPU kernel that multiplies low-bit weights by int8 activations per block (oneDNN's
`w8a8` rounds a whole tensor to one scale), so lmopt carries one with the arithmetic of llama.cpp's
Q4_1 x Q8_1 and Q8_0 x Q8_K dot products (built on first use, see lmopt.native). This module packs
a layer's codes into the kernel's layout and calls it.

It is one candidate among the paths the autotuner times (autotune.py), never chosen because it
exists: where it is not faster, or there is no C compiler, or `LMOPT_NATIVE=0`, torch's kernels run
as before. Numerics: activations are rounded to int8 per block of 32 (as llama.cpp does at every
decode step), on top of the bf16 rounding every path already has; tests check it against the
de-quantized weight times the rounded activations, and BENCHMARKS.md gives the perplexity it costs.
"""

from __future__ import annotations

from typing import Any

import torch

from lmopt.compress.quantize.algorithms import expand_groups
from lmopt.native import available, library

__all__ = ["KERNEL_BITS", "available", "kernel_for", "library", "linear", "pack_weights"]

KERNEL_BITS = {"q4a8": 4, "q8a8": 8}
"""Kernel name -> the code width its layout packs (codes of fewer bits fit: 3-bit codes run as q4a8)."""


def kernel_for(bits: int, group_size: int, in_features: int, out_features: int) -> str | None:
    """The kernel ("q4a8" or "q8a8") that computes this layout exactly, or None: rows in whole groups
    of 16, groups made of whole blocks of 32 inputs (the last, shorter one too)."""
    last = in_features % group_size or group_size
    if out_features % 16 or group_size % 32 or last % 32 or not 2 <= bits <= 8:
        return None
    return "q4a8" if bits <= 4 else "q8a8"


def pack_weights(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                 bits: int) -> dict[str, Any]:
    """The interleaved layout of qa8.c (4-bit codes when bits <= 4, else bytes) from codes (N, K)
    uint8 and per-group scale and zero (N, G); scales in fp16, as QuantLinear already holds them."""
    n, k = codes.shape
    width = 4 if bits <= 4 else 8
    q = codes.to(torch.uint8)
    if width == 4:
        q = q.view(n // 16, 16, k // 32, 4, 2, 4).permute(0, 2, 3, 1, 4, 5)  # (group, block, p, r, half, i)
        wq = (q[..., 0, :] | (q[..., 1, :] << 4)).reshape(n // 16, k // 32, 4, 64)
    else:
        wq = q.view(n // 16, 16, k // 32, 8, 4).permute(0, 2, 3, 1, 4).reshape(n // 16, k // 32, 8, 64)

    def per_block(t: torch.Tensor) -> torch.Tensor:  # (N, G) -> (N/16, K/32, 16) fp16
        t = expand_groups(t.float(), group_size, k)[:, ::32]  # (N, K/32)
        return t.view(n // 16, 16, k // 32).transpose(1, 2).to(torch.float16).contiguous()
    return {"wq": wq.contiguous(), "ws": per_block(scale), "wz": per_block(zero), "shape": (n, k), "bits": width}


def linear(x: torch.Tensor, kernel: dict[str, Any]) -> torch.Tensor:
    """y (M, N) bf16 = x (M, K) W^T for `kernel` = pack_weights(...); x is made bf16 and contiguous."""
    lib = library()
    if lib is None:
        raise RuntimeError("lmopt's C kernels are not available (no C compiler, or LMOPT_NATIVE=0)")
    if x.dtype != torch.bfloat16 or not x.is_contiguous():  # (a no-op .to() still costs ~1 us a call)
        x = x.to(torch.bfloat16).contiguous()
    n, k = kernel["shape"]
    y = torch.empty(x.shape[0], n, dtype=torch.bfloat16)
    if x.shape[0] == 0 and x.shape[1] == k:
        return y
    if x.shape[1] != k or lib.lmopt_qa8_linear(x.data_ptr(), x.shape[0], k, kernel["bits"], kernel["wq"].data_ptr(),
                                               kernel["ws"].data_ptr(), kernel["wz"].data_ptr(), n, y.data_ptr()):
        raise RuntimeError(f"qa8 kernel refused shape {tuple(x.shape)} x ({n}, {k})")
    return y
