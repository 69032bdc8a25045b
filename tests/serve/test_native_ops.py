"""The batch-1 decode step's C functions (serve/native_ops.py, lmopt/native/attention.c and
elementwise.c) against the torch ops they replace: attention (apply_rotary, cache write,
decode_attention, and brute force), HF's RMSNorm after a residual add, SiLU * up; and the engine's
batch-1 step with them on and off."""

from __future__ import annotations

import pytest
import torch

from lmopt.models import tiny_llama
from lmopt.native import library
from lmopt.serve.attention import (
    apply_rotary,
    decode_attention,
    reference_attention,
    rotary_tables,
)
from lmopt.serve.config import EngineConfig
from lmopt.serve.engine import Engine
from lmopt.serve.native_ops import NativeRowOps, native_rope_attend
from lmopt.serve.runner import Segment, StepInputs

pytestmark = pytest.mark.skipif(library() is None, reason="lmopt's C kernels need a C compiler")


@pytest.mark.parametrize("heads,kv_heads,head_dim,position", [(9, 3, 64, 0), (9, 3, 64, 37), (4, 4, 32, 5),
                                                              (8, 2, 128, 300)])
def test_one_token_matches_the_torch_path_and_brute_force(heads, kv_heads, head_dim, position):
    torch.manual_seed(position)
    slots, max_len, slot, scale = 3, 512, 1, head_dim ** -0.5
    kc = torch.randn(slots, kv_heads, max_len, head_dim).bfloat16()
    vc = torch.randn(slots, kv_heads, max_len, head_dim).bfloat16()
    qkv = torch.randn(1, (heads + 2 * kv_heads) * head_dim).bfloat16()
    angle = position / 10000 ** (torch.arange(head_dim // 2) * 2 / head_dim)
    cos, sin = torch.cat([angle.cos()] * 2)[None].bfloat16(), torch.cat([angle.sin()] * 2)[None].bfloat16()
    rope = rotary_tables(cos, sin)

    # the torch path, on copies of the cache
    kt, vt = kc.clone(), vc.clone()
    width = (heads + kv_heads) * head_dim
    qk = apply_rotary(qkv[:, :width].view(1, -1, head_dim), *rope)
    q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, width:].view(1, -1, head_dim)
    kt[slot, :, position], vt[slot, :, position] = k[0], v[0]
    expected = decode_attention(q, kt[slot:slot + 1, :, :position + 1], vt[slot:slot + 1, :, :position + 1],
                                None, scale).reshape(1, -1)

    got = native_rope_attend(heads, kv_heads, head_dim, scale, torch.bfloat16)(qkv, *rope, kc, vc, slot, position)
    # the cache holds the same rotated k (up to one bf16 rounding: fp32 vs bf16 intermediate) and v
    torch.testing.assert_close(kc[slot, :, position].float(), kt[slot, :, position].float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(vc, vt) and torch.equal(kc[:, :, :position], kt[:, :, :position])
    torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)
    brute = reference_attention(q[0][None].float(), kt[slot, :, :position + 1].float(),
                                vt[slot, :, :position + 1].float(), position, scale)
    torch.testing.assert_close(got.float(), brute.reshape(1, -1), rtol=2e-2, atol=2e-2)


def test_it_declines_what_it_does_not_take():
    assert native_rope_attend(9, 3, 64, 0.125, torch.float32) is None  # bf16 only
    assert native_rope_attend(9, 3, 512, 0.125, torch.bfloat16) is None  # head_dim over 256
    attend = native_rope_attend(4, 2, 16, 0.25, torch.bfloat16)
    cache = torch.zeros(1, 2, 8, 16, dtype=torch.bfloat16)
    table = torch.ones(1, 1, 16, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="position 8"):
        attend(torch.zeros(1, 128, dtype=torch.bfloat16), table, table, cache, cache.clone(), 0, 8)


@pytest.mark.parametrize("width", [576, 64, 100])
def test_add_norm_is_hf_rms_norm_after_a_bf16_residual_add(width):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(width)
    norm = LlamaRMSNorm(width, eps=1e-5).to(torch.bfloat16)
    norm.weight.data.normal_(1.0, 0.3)
    x, delta = (torch.randn(1, width) * 3).bfloat16(), torch.randn(1, width).bfloat16()
    ops = NativeRowOps.create(torch.bfloat16)
    expected_x = x + delta
    expected = norm(expected_x)
    got = ops.add_norm(x, delta, norm.weight, 1e-5)
    assert torch.equal(x, expected_x)  # the residual is updated in place, exactly as torch adds in bf16
    # one bf16 ulp at most (fp32 summation order of the mean square)
    torch.testing.assert_close(got.float(), expected.float(), rtol=8e-3, atol=1e-6)
    torch.testing.assert_close(ops.add_norm(x, None, norm.weight, 1e-5).float(), expected.float(),
                               rtol=8e-3, atol=1e-6)


def test_silu_mul_is_torch_silu_times_up():
    torch.manual_seed(0)
    gate_up = (torch.randn(1, 2 * 1536) * 4).bfloat16()
    gate, up = gate_up.split(1536, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    got = NativeRowOps.create(torch.bfloat16).silu_mul(gate_up)
    torch.testing.assert_close(got.float(), expected.float(), rtol=8e-3, atol=1e-6)
    assert NativeRowOps.create(torch.float32) is None  # bf16 rows only


def test_engine_batch1_step_agrees_with_the_torch_path():
    loaded = tiny_llama(hidden_size=128, num_heads=4, num_kv_heads=2)
    loaded.model.to(torch.bfloat16)
    engine = Engine(loaded, EngineConfig(threads=1, max_batch=2, max_model_len=64, kv_cache_mb=4))
    runner = engine.runner
    assert runner.rope_attend is not None and runner.row_ops is not None
    prompt = [5, 9, 11, 40, 7, 3]
    logits = {}
    assert runner.rope_attend_limit in (0, 128, 512, 2048, 8192)  # measured at start (2048 on the EPYC)
    limit = runner.rope_attend_limit
    runner.rope_attend_limit = 8  # positions 6, 7 in C, 8 through SDPA over the cache C wrote
    for native in (True, False):
        saved = runner.rope_attend, runner.row_ops
        runner.rope_attend, runner.row_ops = saved if native else (None, None)
        cache = runner.new_cache(2, 64)
        runner.forward(StepInputs(prompt, list(range(6)), [0] * 6, 0, [Segment(0, 6, 0, 0)], [5]), cache)
        rows = [runner.forward(StepInputs([t], [6 + i], [0], 1, [], [0]), cache) for i, t in enumerate((12, 13, 14))]
        logits[native] = torch.cat(rows)
        runner.rope_attend, runner.row_ops = saved
    runner.rope_attend_limit = limit
    torch.testing.assert_close(logits[True], logits[False], rtol=0.05, atol=0.05)
    # a one-token prompt chunk that needs no logits (prefill_chunk 1) gets none
    cache = runner.new_cache(2, 64)
    assert runner.forward(StepInputs([5], [0], [0], 0, [Segment(0, 1, 0, 0)], []), cache).shape[0] == 0
    assert torch.equal(logits[True].argmax(-1), logits[False].argmax(-1))
