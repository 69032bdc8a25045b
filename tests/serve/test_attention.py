"""Attention over the slot cache against brute force, and the rotary embedding against transformers."""

from __future__ import annotations

import torch

from lmopt.serve.attention import (
    apply_rotary,
    decode_attention,
    decode_mask,
    one_row_rms_norm,
    prefill_attention,
    prefill_mask,
    reference_attention,
    rotary_tables,
)


def _qkv(t: int, length: int, heads: int = 6, kv_heads: int = 2, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(t, heads, d, generator=g)
    k = torch.randn(kv_heads, length, d, generator=g)
    v = torch.randn(kv_heads, length, d, generator=g)
    return q, k, v


def test_prefill_attention_matches_brute_force_with_and_without_cached_prefix() -> None:
    for start in (0, 5):
        q, k, v = _qkv(7, start + 7)
        out = prefill_attention(q, k, v, prefill_mask(start, 7, groups=3), scale=0.25)
        torch.testing.assert_close(out, reference_attention(q, k, v, start, 0.25), atol=1e-5, rtol=1e-5)


def test_decode_attention_rows_at_different_lengths_match_each_sequence_alone() -> None:
    lengths = [3, 9, 1]
    span = max(lengths)
    qs, ks, vs = [], [], []
    for i, n in enumerate(lengths):
        q, k, v = _qkv(1, span, seed=i)
        k[:, n:] = 1e4  # garbage past a row's length must be masked out
        qs.append(q[0]), ks.append(k), vs.append(v)
    mask = decode_mask(torch.tensor(lengths), span)
    out = decode_attention(torch.stack(qs), torch.stack(ks), torch.stack(vs), mask, 0.25)
    for i, n in enumerate(lengths):
        ref = reference_attention(qs[i][None], ks[i][:, :n], vs[i][:, :n], n - 1, 0.25)[0]
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)


def test_rotary_matches_transformers() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    n, h, d = 5, 3, 8
    q, k = torch.randn(n, h, d), torch.randn(n, 2, d)
    angles = torch.rand(n, d // 2) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    # HF layout: (batch, heads, seq, D) with cos/sin (batch, seq, D)
    ref_q, ref_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                        cos[None], sin[None])
    tables = rotary_tables(cos, sin)
    torch.testing.assert_close(apply_rotary(q, *tables), ref_q[0].transpose(0, 1))
    torch.testing.assert_close(apply_rotary(k, *tables), ref_k[0].transpose(0, 1))


def test_one_decode_row_without_mask_matches_brute_force() -> None:
    q, k, v = _qkv(1, 9)
    out = decode_attention(q, k[None], v[None], None, 0.25)
    torch.testing.assert_close(out[0], reference_attention(q, k, v, 8, 0.25)[0], atol=1e-5, rtol=1e-5)


def test_one_row_rms_norm_matches_transformers_rounding() -> None:
    """Against HF's LlamaRMSNorm before its weight (fp32 normalize, one rounding to bf16): the same
    bf16 values (at most 1 ulp apart on rare ties), also for rows of large and tiny magnitude."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    hf = LlamaRMSNorm(576, eps=1e-5).to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    exact = total = 0
    for scale in (1e-3, 1.0, 30.0):
        for _ in range(50):
            x = (torch.randn(1, 576, generator=g) * scale).to(torch.bfloat16)
            with torch.no_grad():
                ours, ref = one_row_rms_norm(x, 1e-5), hf(x)  # its weight is ones: the norm alone
            assert ours.dtype == ref.dtype == torch.bfloat16
            torch.testing.assert_close(ours.float(), ref.float(), rtol=2 ** -7, atol=0)  # <= 1 bf16 ulp
            exact += int((ours == ref).sum())
            total += ref.numel()
    assert exact / total > 0.999


def test_kv_cache_write_one_stores_what_write_stores() -> None:
    from lmopt.serve.kv_cache import KVCache

    a, b = (KVCache(2, 3, 2, 8, 4, torch.bfloat16) for _ in range(2))
    v = torch.randn(1, 2, 4).to(torch.bfloat16)
    kt = torch.randn(1, 4, 2).to(torch.bfloat16).transpose(1, 2)  # a strided view, as the runner's k is
    a.write(1, torch.tensor([2]), torch.tensor([5]), kt, v)
    b.write_one(1, 2, 5, kt[0], v[0])
    assert all(torch.equal(x, y) for x, y in zip(a.k + a.v, b.k + b.v, strict=True))
    assert torch.equal(b.k[1][2, :, 5], kt[0]) and torch.equal(b.v[1][2, :, 5], v[0])
