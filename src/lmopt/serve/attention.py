"""Pure tensor math of the engine's forward pass: rotary embedding and attention over the slot cache.

Tensors in, tensors out; no model, no scheduler. The engine flattens every token of an iteration
into one (N, ...) batch for the matmuls; attention is the only place where sequences differ, so it
comes in two shapes:

- decode: one new token per sequence, B sequences at different positions, one SDPA call with a
  per-row length mask;
- prefill chunk: T new tokens of one sequence after `start` cached ones, causal within the chunk.

A single decode token (batch 1) in bf16 can instead take lmopt's C function doing rotary, cache write
and attention in one call (`native_ops.py`; same math, results agree to bf16 rounding).

Grouped-query attention is done without repeating K/V: the G query heads that share a KV head are
folded into the query-length axis, (B, H, 1, D) -> (B, KVH, G, D), so SDPA reads each K/V once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's cos/sin (N, D) -> (N, 1, D) tables for `apply_rotary`, sin with the rotation's signs folded in.

    HF rotates with rotate_half(x) = [-x2, x1] = roll(x, D/2) * [-1.., +1..]; folding the signs into
    sin once per step leaves 4 ops per call (roll, 2 mul, add) instead of 8, in every layer.
    """
    half = cos.shape[-1] // 2
    sign = torch.ones_like(sin)
    sign[:, :half] = -1
    return cos[:, None], (sin * sign)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x (N, heads, D), tables (N, 1, D) from `rotary_tables` -> x rotated to each token's position."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


def one_row_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x (1, hidden) bf16/fp16 -> x / sqrt(mean(x^2) + eps), computed in fp32 and rounded once, as HF's
    RMSNorm does before its weight.

    As layer_norm of [x, -x]: that row's mean is 0 and its variance mean(x^2), so layer norm's first
    half is the RMS norm. On CPU, `F.rms_norm` of a single row costs about twice `F.layer_norm` (its
    fp32 round trip included), and this runs 61 times per decoded token in a 30-layer model."""
    width = x.shape[-1]
    return F.layer_norm(torch.cat([x, -x], dim=-1), (2 * width,), None, None, eps)[..., :width]


def decode_mask(lengths: torch.Tensor, span: int) -> torch.Tensor:
    """(B,) attended lengths -> (B, 1, 1, span) bool mask, True where a row may attend."""
    return (torch.arange(span, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]


def prefill_mask(start: int, t: int, groups: int, device: Any = None) -> torch.Tensor:
    """Causal mask of a T-token chunk after `start` cached tokens, repeated for G folded heads: (G*T, L)."""
    pos = torch.arange(start + t, device=device)
    causal = pos[None, :] <= (start + torch.arange(t, device=device))[:, None]  # (T, L)
    return causal.repeat(groups, 1)  # rows ordered (g, t) like the folded queries


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """One query token per sequence.

    q (B, H, D); k, v (B, KVH, L, D); mask (B, 1, 1, L) from `decode_mask` (each row's cached tokens
    plus the new one), or None when every row attends to all L. Returns (B, H, D).
    """
    b, h, d = q.shape
    kvh = k.shape[1]
    qg = q.view(b, kvh, h // kvh, d)  # (B, KVH, G, D): the G heads of a KV group as G "queries"
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    return out.reshape(b, h, d)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """T new tokens of one sequence whose first `start` tokens are already cached.

    q (T, H, D); k, v (KVH, start + T, D) holding the cached and the new tokens; mask (G*T, start + T)
    from `prefill_mask`. Returns (T, H, D).
    """
    t, h, d = q.shape
    kvh = k.shape[0]
    g = h // kvh
    qg = q.view(t, kvh, g, d).permute(1, 2, 0, 3).reshape(kvh, g * t, d)  # rows ordered (g, t)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)  # (KVH, G*T, D)
    return out.view(kvh, g, t, d).permute(2, 0, 1, 3).reshape(t, h, d)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
                        scale: float) -> torch.Tensor:
    """Brute-force causal GQA for one sequence (tests): q (T, H, D), k/v (KVH, start + T, D)."""
    t, h, _ = q.shape
    g = h // k.shape[0]
    kr, vr = k.repeat_interleave(g, dim=0), v.repeat_interleave(g, dim=0)  # (H, L, D)
    scores = torch.einsum("thd,hld->htl", q.float(), kr.float()) * scale
    pos = torch.arange(k.shape[1])
    allowed = pos[None, :] <= (start + torch.arange(t))[:, None]
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("htl,hld->thd", scores.softmax(-1), vr.float()).to(q.dtype)
