"""Pure tensor math of the engine's forward pass: rotary embedding and attention over the slot cache.

Tensors in, tensors out; no model, no scheduler. The engine flattens every token of an iteration
into one (N, ...) batch for the matmuls; attention is the only place where sequences differ, so it
comes in two shapes:

- decode: one new token per sequence, B sequences at different positions, one SDPA call with a
  per-row length mask;
- prefill chunk: T new tokens of one sequence after `start` cached ones, causal within the chunk.

Grouped-query attention is done without repeating K/V: the G query heads that share a KV head are
folded into the query-length axis, (B, H, 1, D) -> (B, KVH, G, D), so SDPA reads each K/V once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (..., D): [-x2, x1], the rotation HF's llama rotary embedding uses."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (N, heads, D), cos/sin (N, D) -> x rotated to each token's position."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """One query token per sequence.

    q (B, H, D); k, v (B, KVH, L, D) with L >= max(lengths); lengths (B,) = tokens each row attends
    to (its cached tokens plus the new one). Returns (B, H, D).
    """
    b, h, d = q.shape
    kvh, length = k.shape[1], k.shape[2]
    qg = q.view(b, kvh, h // kvh, d)  # (B, KVH, G, D): the G heads of a KV group as G "queries"
    mask = torch.arange(length, device=q.device)[None, :] < lengths[:, None]  # (B, L)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask[:, None, None, :], scale=scale)
    return out.reshape(b, h, d)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
                      scale: float) -> torch.Tensor:
    """T new tokens of one sequence whose first `start` tokens are already cached.

    q (T, H, D); k, v (KVH, start + T, D) holding the cached and the new tokens. Token i of the chunk
    sees cache positions 0 .. start + i. Returns (T, H, D).
    """
    t, h, d = q.shape
    kvh, length = k.shape[0], k.shape[1]
    g = h // kvh
    qg = q.view(t, kvh, g, d).permute(1, 2, 0, 3).reshape(kvh, g * t, d)  # rows ordered (g, t)
    pos = torch.arange(length, device=q.device)
    causal = pos[None, :] <= (start + torch.arange(t, device=q.device))[:, None]  # (T, L)
    mask = causal.repeat(g, 1)  # (G*T, L), same order as qg's rows
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
