"""`benchmark_speed` on tiny models: the quantized model's prefill is measured both ways (as loaded, and
with the dense copies the serving engine keeps), and the copies are freed afterwards."""

from __future__ import annotations

import torch

from lmopt.compress.quantize import RTNConfig, prepare_runtime, quantize
from lmopt.compress.quantize.runtime import QuantLinear, dense_copy_mb
from lmopt.evaluate.speed import benchmark_speed
from lmopt.models import tiny_llama

FAST = {"prefill_len": 16, "prompt_len": 4, "new_tokens": 3, "batch_sizes": (1,), "repeats": 1}


def test_quantized_prefill_is_measured_with_and_without_dense_copies() -> None:
    loaded = tiny_llama()
    loaded.model.to(torch.bfloat16)
    quantize(loaded.model, RTNConfig(bits=4, group_size=32))
    prepare_runtime(loaded.model)
    layers = [m for m in loaded.model.modules() if isinstance(m, QuantLinear)]
    before = [m.plan for m in layers]
    result = benchmark_speed(loaded.model, loaded.tokenizer, **FAST)
    assert result["prefill_tokens_per_s"] > 0 and result["prefill_tokens_per_s_dense_copies"] > 0
    # a bf16 copy (2 bytes per weight) of each layer whose measured plan runs a dense path for prompts
    weights = sum(m.in_features * m.out_features for m in layers)
    assert 0 < result["dense_copies_mb"] <= 2 * weights / 1e6 + 1e-6
    # freed afterwards: the model is as loaded
    assert dense_copy_mb(loaded.model) == 0 and not any(m.cache_dense for m in layers)
    assert [m.plan for m in layers] == before
    assert "dense_copies_mb" not in benchmark_speed(loaded.model, loaded.tokenizer, dense_copies=False, **FAST)


def test_float_model_has_no_dense_copy_figures() -> None:
    loaded = tiny_llama()
    result = benchmark_speed(loaded.model, loaded.tokenizer, **FAST)
    assert result["prefill_tokens_per_s"] > 0 and "prefill_tokens_per_s_dense_copies" not in result
