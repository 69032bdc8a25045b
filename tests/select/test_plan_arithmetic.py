"""The hardware plan's arithmetic against hand-computed numbers, brute force and the model itself."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from lmopt.errors import LmoptError
from lmopt.hardware import weight_bytes_per_token
from lmopt.select.hardware_table import TARGETS, Target, get_target, target_names
from lmopt.select.model_shape import ModelShape, model_shape
from lmopt.select.plan import PlanConfig, plan
from lmopt.select.roofline import (
    cost_per_million,
    decode_tokens_per_s,
    make_format,
    memory,
    prefill_tokens_per_s,
    weight_bytes,
    weight_bytes_read,
)


def shape(**kw) -> ModelShape:
    base = dict(name="toy", matrices=((100, 256),), embedding=None, vector_params=10, layers=1, hidden=64,
                intermediate=128, vocab=1000, attention_heads=1, kv_heads=1, head_dim=64)
    return ModelShape(**{**base, **kw})


def gpu(memory_gb: float = 2.0, bandwidth: float = 100.0, bf16: float = 10.0, price: float | None = 3.6) -> Target:
    return Target("toy-gpu", "gpu", memory_gb, bandwidth, bf16, 2 * bf16, bf16 / 4, price, "test", "test")


def test_weight_bytes_per_format_by_hand():
    s = shape()  # one 100 x 256 matrix, 10 vector parameters
    assert weight_bytes(s, make_format("fp32")) == 100 * 256 * 4 + 10 * 4
    assert weight_bytes(s, make_format("bf16")) == 100 * 256 * 2 + 10 * 2
    assert weight_bytes(s, make_format("int8")) == 100 * 256 + 100 * 2 + 10 * 2  # one fp16 scale per row
    # int4, groups of 128: half a byte per weight + (fp16 scale + 4-bit zero) per group
    assert weight_bytes(s, make_format("int4", 128)) == 100 * 256 / 2 + (25600 / 128) * 2.5 + 10 * 2
    untied = shape(embedding=(1000, 64))
    assert weight_bytes(untied, make_format("bf16")) == weight_bytes(s, make_format("bf16")) + 1000 * 64 * 2
    assert weight_bytes_read(untied, make_format("bf16")) == weight_bytes_read(s, make_format("bf16"))


def test_kv_cache_and_sliding_windows_by_hand():
    s = shape(layers=4, kv_heads=2, head_dim=8)
    assert s.kv_bytes(100, 3, 2) == 2 * 2 * 8 * (4 * 100) * 3 * 2
    windowed = shape(layers=4, kv_heads=2, head_dim=8, windows=(None, 50, None, 50))
    assert windowed.kv_tokens(100) == 300 and windowed.kv_tokens(40) == 160
    assert windowed.kv_bytes(100, 3, 2) == 2 * 2 * 8 * 300 * 3 * 2


@pytest.mark.parametrize("context, window", [(5, None), (5, 3), (3, 5), (17, 4), (1, 1)])
def test_causal_keys_match_brute_force(context, window):
    s = shape(windows=(window,))
    brute = sum(min(i, window) if window else i for i in range(1, context + 1))
    assert s.attention_keys_prefill(context) == brute


def test_fit_and_no_fit_by_hand():
    big = shape(matrices=((10_000, 30_000),))  # 3e8 weights: 0.6 GB in bf16, 1.2 GB in fp32
    target = gpu(memory_gb=2.0)  # 1 GB reserved for the CUDA context: 1.0 GB usable
    bf16 = memory(big, make_format("bf16"), target, context=1000, batch=1)
    assert bf16.kv_cache == 2 * 1 * 64 * 1000 * 2
    assert bf16.activations == 1000 * (64 + 2 * 128) * 2 + 1000 * 4
    assert bf16.usable == 1e9 and bf16.total == 0.6e9 + 20 + bf16.kv_cache + bf16.activations and bf16.fits
    assert not memory(big, make_format("fp32"), target, 1000, 1).fits
    result = plan(big, target, context=1000, batch=1, config=PlanConfig(measure=False))
    assert [r.format for r in result.rows if r.fits] == ["bf16", "int8", "int4"]
    assert result.recommended == "bf16" and result.fastest in ("int8", "int4")
    tight = plan(big, gpu(memory_gb=1.2), context=1000, config=PlanConfig(measure=False))  # 0.2 GB usable
    assert tight.recommended == "int4" and not tight.row("int8").fits
    none = plan(big, gpu(memory_gb=1.1), context=1000, config=PlanConfig(measure=False))
    assert none.recommended is None and "no format fits" in none.notes[-1]


def test_a_cpu_that_emulates_bf16_is_recommended_fp32():
    """bf16 slower than fp32 (no native bf16): fp32 is the first choice where it fits, bf16 the next."""
    emulated = Target("avx2", "cpu", 24, 30.0, 0.02, None, 0.18, None, "test", "test")
    assert plan(shape(), emulated, context=128, config=PlanConfig(measure=False)).recommended == "fp32"
    big = shape(matrices=((10_000, 30_000),))  # 1.2 GB in fp32, 0.6 GB in bf16
    small = replace(emulated, memory_gb=3.0)  # 2 GB reserved on a CPU host: 1 GB usable
    assert plan(big, small, context=1000, config=PlanConfig(measure=False)).recommended == "bf16"


def test_apple_unified_memory_share():
    apple = Target("m", "apple", 16, 100, 4, None, 4, None, "-", "-")
    assert memory(shape(), make_format("bf16"), apple, 10, 1).usable == 16e9 * 0.75


def test_decode_roofline_memory_and_compute_bound_by_hand():
    s = shape(matrices=((1000, 1000),), vector_params=0)  # 1e6 weights, 2e6 bytes in bf16
    target = gpu(bandwidth=100.0, bf16=10.0)
    # batch 1, no KV yet: memory-bound, 2e6 bytes / 100e9 B/s = 2e-5 s per token
    kv = 2 * 64 * 1 * 2  # bytes of KV at context 1
    assert decode_tokens_per_s(s, make_format("bf16"), target, 1, 1) == pytest.approx(100e9 / (2e6 + kv))
    # batch 4096: flops = 4096 x (2e6 + 4 x 64 x 1) against 10 TFLOPS; bytes = 2e6 + 4096 x kv
    flops = 4096 * (2e6 + 4 * 64)
    moved = 2e6 + 4096 * kv
    expected = 4096 / max(flops / 10e12, moved / 100e9)
    assert decode_tokens_per_s(s, make_format("bf16"), target, 1, 4096) == pytest.approx(expected)
    assert flops / 10e12 > moved / 100e9  # compute-bound there
    # an overhead per step adds to the step time
    slow = decode_tokens_per_s(s, make_format("bf16"), target, 1, 1, overhead_s=1e-3)
    assert slow == pytest.approx(1 / (1e-3 + (2e6 + kv) / 100e9))


def test_prefill_roofline_by_hand():
    s = shape(matrices=((1000, 1000),), vector_params=0)
    target = gpu(bandwidth=100.0, bf16=10.0)
    context = 512
    flops = 2 * 1e6 * context + 4 * 64 * (context * (context + 1) // 2)
    moved = 2e6 + 2 * 64 * context * 2
    expected = context / max(flops / 10e12, moved / 100e9)
    assert prefill_tokens_per_s(s, make_format("bf16"), target, context) == pytest.approx(expected)
    # int8 runs on the int8 unit (2x here), fp32 on the fp32 one (bf16 / 4 here)
    assert prefill_tokens_per_s(s, make_format("int8"), target, context) > expected
    assert prefill_tokens_per_s(s, make_format("fp32"), target, context) < expected


def test_low_bit_formats_compute_on_the_faster_dense_unit():
    """A CPU that emulates bf16 (measured here: fp32 9x faster) runs int4 and int8-without-an-int8-unit
    prompt chunks on fp32 copies (lmopt's autotuned kernels), so their compute bound is fp32's; where
    bf16 is the faster unit (the GPU above) it stays bf16's."""
    s = shape(matrices=((1000, 1000),), vector_params=0)
    emulated = Target("avx2", "cpu", 24, 30.0, 0.02, None, 0.18, None, "test", "test")
    context, flops_per_token = 512, 2 * 1e6 + 4 * 64 * (512 * 513 // 2) / 512
    for fmt in ("int4", "int8"):
        tok_s = prefill_tokens_per_s(s, make_format(fmt), emulated, context)
        assert tok_s == pytest.approx(0.18e12 / flops_per_token)  # compute-bound at the fp32 peak
        assert tok_s == pytest.approx(prefill_tokens_per_s(s, make_format("fp32"), emulated, context))
    assert prefill_tokens_per_s(s, make_format("bf16"), emulated, context) == pytest.approx(0.02e12 / flops_per_token)
    fast_bf16 = gpu(bf16=10.0)  # fp32 at bf16 / 4
    assert fast_bf16.compute_tflops("dense") == 10.0 and fast_bf16.compute_tflops("int8") == 20.0


def test_cost_per_million_tokens():
    assert cost_per_million(3.6, 1000.0) == pytest.approx(1.0)  # $3.6/h = $0.001/s; 1e6 tokens take 1000 s
    assert cost_per_million(None, 1000.0) is None


def test_shape_of_a_model_matches_the_model(tiny):
    s = model_shape(tiny)
    assert s.params == sum(p.numel() for p in tiny.model.parameters())
    # per layer: q 64x64, k and v 32x64 (2 KV heads of 16), o 64x64, gate and up 128x64, down 64x128
    per_layer = 64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3
    assert s.matrix_params == 2 * per_layer + s.vocab * 64 and s.embedding is None  # tied: the lm_head
    assert s.vector_params == 2 * 2 * 64 + 64
    buffers = sum(b.numel() * b.element_size() for b in tiny.model.buffers())  # rotary frequencies, not weights
    assert weight_bytes_read(s, make_format("fp32")) == weight_bytes_per_token(tiny.model) - buffers


def test_the_embedded_shape_from_its_config_alone():
    s = model_shape("smollm2-135m-instruct")  # built on the meta device: no weights read
    assert (s.layers, s.hidden, s.kv_heads, s.head_dim, s.vocab) == (30, 576, 3, 64, 49152)
    assert s.params == 134_515_008


def test_hardware_table_rows_are_complete():
    assert len(set(target_names())) == len(target_names())
    for target in TARGETS.values():
        assert target.kind in ("gpu", "tpu", "apple", "cpu") and target.source and target.price_source
        assert target.memory_gb > 0 and target.bandwidth_gbs > 0 and target.bf16_tflops > 0
        assert target.price_per_hour is None or target.price_per_hour > 0
        assert not math.isnan(target.compute_tflops("int8"))
    assert get_target("H100-SXM").bandwidth_gbs == 3350
    with pytest.raises(LmoptError, match="unknown hardware 'z80'"):
        get_target("z80")


def test_price_override_and_this_machine_without_measuring(tiny):
    result = plan(tiny, "h200", context=256, config=PlanConfig(price_per_hour=7.2, measure=False))
    assert result.target["price_per_hour"] == 7.2 and result.target["price_source"] == "given by the user"
    row = result.row("bf16")
    assert row.cost_per_m_output == pytest.approx(7.2 / 3600 / row.decode_tok_s * 1e6, rel=1e-3)  # 4 significant digits
