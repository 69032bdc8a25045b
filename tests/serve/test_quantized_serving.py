"""Serving quantized models through QuantLinear's public methods: no private fields or class-name
checks in lmopt.serve, measured kernel plans shared by the stacked projections and the originals,
and dense copies for layouts without a low-bit kernel (group-wise int8)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import lmopt.serve
from lmopt.compress.quantize import RTNConfig, native, prepare_runtime, quantize
from lmopt.compress.quantize import autotune as at
from lmopt.compress.quantize.runtime import QuantLinear, keep_dense_weights
from lmopt.models import tiny_llama
from lmopt.serve.config import EngineConfig
from lmopt.serve.engine import Engine
from lmopt.serve.sampling import SamplingParams

SERVE_DIR = Path(lmopt.serve.__file__).parent
PRIVATE = re.compile(r"\._(dense|kernel|dense_rows)\b|__name__\s*==\s*[\"']QuantLinear")


def test_serve_uses_no_private_quantlinear_fields():
    hits = [f"{path.name}:{n}: {line.strip()}" for path in sorted(SERVE_DIR.glob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert hits == []
    assert PRIVATE.search('if type(m).__name__ == "QuantLinear" and m._dense is None:')  # the pattern bites


@pytest.fixture
def fake_timings(tmp_path, monkeypatch):
    """Measured plans from fixed timings: the layer's own low-bit kernel fastest up to 8 rows, dense bf16 from
    32 rows (prompt chunks), fp32 never; de-quantizing per call costs more than any matmul."""
    monkeypatch.setenv("LMOPT_HOME", str(tmp_path))
    monkeypatch.setattr(at, "_LOADED", {})

    def measure(layer, kernels, rows=at.ROWS):
        paths = {"bf16": [4.0, 4.0, 4.0, 20.0], "fp32": [9.0, 9.0, 9.0, 90.0]}
        for i, kernel in enumerate(kernels):  # the backend's own kernel first and fastest
            paths[kernel] = [1.0 + i, 2.0 + i, 8.0 + i, 100.0]
        return {"rows": list(rows), "paths": paths, "dequant": {"bf16": 50.0, "fp32": 50.0}}
    monkeypatch.setattr(at, "measure", measure)


def _model(bits: int, group: int):
    """A tiny llama wide enough (256) for its layers to be measured, quantized and prepared."""
    loaded = tiny_llama(hidden_size=256, intermediate_size=512)
    loaded.model.to(torch.bfloat16)
    quantize(loaded.model, RTNConfig(bits=bits, group_size=group))
    prepare_runtime(loaded.model)
    return loaded


def _engine(loaded) -> Engine:
    return Engine(loaded, EngineConfig(threads=1, max_batch=3, max_step_tokens=16, prefill_chunk=16,
                                       max_model_len=96, kv_cache_mb=8))


def test_stacked_projections_run_one_measured_plan_with_one_dense_copy(fake_timings):
    loaded = _model(4, 64)
    q_proj = loaded.model.model.layers[0].self_attn.q_proj
    assert q_proj.plan.source == "measured" and q_proj.dense_weight() is None  # no copy allowed yet
    engine = _engine(loaded)
    fused = engine.runner.qkv[0].inner
    assert isinstance(fused, QuantLinear) and fused.plan.tiers == ((16, "int4"), (at.MAX_ROWS, "bf16"))
    attn = loaded.model.model.layers[0].self_attn
    for part in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert part.plan.tiers == fused.plan.tiers and part.plan.source.startswith("stacked (512x256)")
        assert part.dense_weight().untyped_storage().data_ptr() == fused.dense_weight().untyped_storage().data_ptr()
    x = torch.randn(40, 256, dtype=torch.bfloat16)  # prompt-chunk rows: the dense path
    with torch.inference_mode():
        for rows in (x[:3], x):
            q, k, v = engine.runner.qkv[0](rows)
            for got, part in zip((q, k, v), (attn.q_proj, attn.k_proj, attn.v_proj), strict=True):
                torch.testing.assert_close(got, part(rows), rtol=1e-2, atol=1e-2)
    plan = {r["layers"]: r for r in at.kernel_plan(loaded.model)}
    assert plan["model.layers.*.self_attn.k_proj"]["paths"] == "rows 1-16: int4; 17+: bf16 (dense copy)"


@pytest.fixture
def no_native_kernels(monkeypatch):
    """As on a machine without a C compiler: lmopt's own kernels (native.py) are not offered."""
    monkeypatch.setenv("LMOPT_NATIVE", "0")
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def test_group_wise_int8_serves_from_a_dense_copy_and_matches_generate(fake_timings, no_native_kernels):
    loaded = _model(8, 64)  # group-wise int8: no torch kernel (and here no C one)
    layers = [m for m in loaded.model.modules() if isinstance(m, QuantLinear)]
    grouped = [m for m in layers if m.backend == "dequant"]
    measured = [m for m in grouped if m.in_features * m.out_features >= at.MIN_WEIGHTS]
    assert measured and all(m.plan.tiers == ((at.MAX_ROWS, "bf16"),) for m in measured)
    assert all(m.dense_weight() is None for m in grouped)  # no copy allowed yet: de-quantized per call
    engine = _engine(loaded)
    # every one now has a bf16 copy: its own, or (k/v, too small to measure) a view of the stacked q/k/v's
    assert all(m.dense_weight() is not None and m.dense_weight().dtype == torch.bfloat16 for m in grouped)
    assert keep_dense_weights(loaded.model) == 0  # already switched by the engine
    assert engine.runner.qkv[0] is not None and engine.runner.gate_up[0] is not None
    prompts = [[5, 9, 11, 40, 7], list(range(20, 32))]
    outs = engine.generate(prompts, SamplingParams(max_tokens=6, temperature=0))
    for prompt, out in zip(prompts, outs, strict=True):
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            ref = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                        do_sample=False, pad_token_id=0)
        assert out.token_ids == ref[0, len(prompt):].tolist()
