"""The batch-1 decode step's small ops in lmopt's C functions (lmopt/native): one call each.

At batch 1 a decoder layer is four matmuls and about twenty small torch ops (norms, rotary, cache
writes, attention, residual adds, SiLU), each with a fixed cost of 1-30 us that exceeds its
arithmetic on one row. The runner (runner.py) uses these instead when an iteration holds a single
token, the model runs in bf16 and the C library is built (`lmopt.native`):
- `native_rope_attend`: rotary on q and k, the KV-cache write and attention over the cache
  (attention.c; replaces about fifteen ops and an SDPA call), used up to the cached length where it
  measured faster than the torch path (`native_attention_limit`, timed once per shape);
- `NativeRowOps.add_norm`: residual add + RMSNorm, `silu_mul`: SiLU(gate) * up (elementwise.c).
Same math as the torch path, rounded to bf16 where that path stores a tensor, so results agree to
bf16 rounding (tests/serve/test_native_ops.py). None where they do not apply; the torch path runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

from lmopt.native import library
from lmopt.serve.attention import apply_rotary, decode_attention, rotary_tables


def native_rope_attend(heads: int, kv_heads: int, head_dim: int, scale: float, dtype: torch.dtype
                       ) -> Callable[..., torch.Tensor] | None:
    """lmopt's C path for one decode token's attention, or None where it does not apply (no C
    library, a dtype other than bf16, head_dim over 256). The returned function takes the fused
    projection's output row qkv (1, (H + 2 KVH) * D), the step's rotary tables (1, 1, D) each (sin
    with rotate_half's signs, `attention.rotary_tables`), this layer's cache tensors (slots, KVH,
    max_len, D), the slot and position, and returns (1, H * D)."""
    lib = library()
    if lib is None or dtype != torch.bfloat16 or head_dim > 256 or heads % kv_heads:
        return None
    call = lib.lmopt_rope_attend_one

    def rope_attend(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, kc: torch.Tensor,
                    vc: torch.Tensor, slot: int, position: int) -> torch.Tensor:
        out = torch.empty(1, heads * head_dim, dtype=dtype)
        slot_bytes = kc.stride(0) * kc.element_size()  # (slots, KVH, max_len, D), contiguous
        if call(qkv.data_ptr(), cos.data_ptr(), signed_sin.data_ptr(), kc.data_ptr() + slot * slot_bytes,
                vc.data_ptr() + slot * slot_bytes, heads, kv_heads, head_dim, kc.shape[2], position, scale,
                out.data_ptr()):
            raise RuntimeError(f"native attention refused position {position} (cache length {kc.shape[2]})")
        return out
    return rope_attend


SPANS = (128, 512, 2048, 8192)
"""Cached lengths at which the C attention is timed against the torch path (`native_attention_limit`)."""


@lru_cache(maxsize=16)
def native_attention_limit(heads: int, kv_heads: int, head_dim: int, max_len: int, threads: int) -> int:
    """The longest cached length (from SPANS, up to max_len) up to which the C attention measured at
    least as fast as the torch path (apply_rotary, cache write, SDPA), 0 if never; timed once per
    shape and thread count in this process (about 0.1 s). The C path's per-head loops win at short
    and middle lengths (7x at 16 tokens here), SDPA's flash kernel can win at long ones."""
    attend = native_rope_attend(heads, kv_heads, head_dim, head_dim ** -0.5, torch.bfloat16)
    if attend is None:
        return 0
    spans = [*(s for s in SPANS if s < max_len), min(max_len, SPANS[-1])]
    length = spans[-1]
    kc, vc = (torch.randn(1, kv_heads, length, head_dim).bfloat16() for _ in range(2))
    qkv = torch.randn(1, (heads + 2 * kv_heads) * head_dim).bfloat16()
    rope = rotary_tables(torch.ones(1, head_dim).bfloat16(), torch.zeros(1, head_dim).bfloat16())
    width = (heads + kv_heads) * head_dim

    def torch_path(pos: int) -> torch.Tensor:
        qk = apply_rotary(qkv[:, :width].view(1, -1, head_dim), *rope)
        kc[0, :, pos], vc[0, :, pos] = qk[0, heads:], qkv[0, width:].view(-1, head_dim)
        return decode_attention(qk[:, :heads], kc[:, :, :pos + 1], vc[:, :, :pos + 1], None, head_dim ** -0.5)

    limit = 0
    with torch.inference_mode():
        for span in spans:
            ours = _best_seconds(lambda s=span: attend(qkv, *rope, kc, vc, 0, s - 1))
            theirs = _best_seconds(lambda s=span: torch_path(s - 1))
            if ours > theirs:
                break
            limit = span
    return limit


def _best_seconds(fn: Callable[[], Any], calls: int = 5, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


class NativeRowOps:
    """Residual add + RMSNorm and SiLU * up on one bf16 row, in C. Build with `NativeRowOps.create()`."""

    def __init__(self, lib: Any) -> None:
        self._add_norm, self._silu_mul = lib.lmopt_add_rms_norm, lib.lmopt_silu_mul

    @classmethod
    def create(cls, dtype: torch.dtype) -> NativeRowOps | None:
        lib = library()
        return cls(lib) if lib is not None and dtype == torch.bfloat16 else None

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x += delta in place (x (1, hidden) bf16, contiguous; delta None: no add); returns
        weight * rms_norm(x) as HF's RMSNorm computes it, (1, hidden) bf16."""
        out = torch.empty_like(x)
        self._add_norm(x.data_ptr(), None if delta is None else delta.contiguous().data_ptr(), weight.data_ptr(),
                       x.shape[-1], eps, out.data_ptr())
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """gate_up (1, 2I) bf16 = [gate | up] -> silu(gate) * up, (1, I) bf16."""
        gate_up = gate_up.contiguous()
        out = torch.empty(1, gate_up.shape[-1] // 2, dtype=gate_up.dtype)
        self._silu_mul(gate_up.data_ptr(), out.shape[-1], out.data_ptr())
        return out
