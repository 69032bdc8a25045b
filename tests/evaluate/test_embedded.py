"""The real embedded model: perplexity, bf16 agreement, accuracy above chance, speed figures.

(Its conversion and shape are checked in tests/models/test_embedded.py.)
"""

import pytest
import torch

from lmopt.data import pydoc_text
from lmopt.evaluate import evaluate, perplexity
from lmopt.evaluate.speed import benchmark_speed

pytestmark = pytest.mark.integration


def test_perplexity_fp32_vs_bf16(embedded):
    text = pydoc_text("eval")
    fp32 = perplexity(embedded.model, embedded.tokenizer, text, seq_len=512, limit=2)
    bf16_model = embedded.model.to(torch.bfloat16)
    try:
        bf16 = perplexity(bf16_model, embedded.tokenizer, text, seq_len=512, limit=2)
    finally:
        embedded.model.to(torch.float32)
    assert 5 < fp32["perplexity"] < 30  # a 135M model on Python's docs; random would be ~49152
    assert bf16["perplexity"] == pytest.approx(fp32["perplexity"], rel=0.01)


def test_accuracy_above_chance(embedded, data_dir):
    result = evaluate(embedded, ["arc_easy"], limit=30, data_dir=data_dir)["tasks"]["arc_easy"]
    assert result["n"] == 30 and result["acc"] > 0.35  # chance is 0.25


def test_speed_figures(embedded):
    # buffers counted before generating: generate() may re-point rotary_emb.inv_freq at original_inv_freq
    buffers = sum(b.numel() * b.element_size() for b in embedded.model.buffers() if b.numel() > 1)
    speed = benchmark_speed(embedded.model, embedded.tokenizer, prefill_len=64, new_tokens=4,
                            batch_sizes=(1,), repeats=1, path=embedded.path, bandwidth_gbs=20.0)
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s_bs1", "time_to_first_token_s"):
        assert speed[key] > 0, key  # timings: no reference, but a zero means a missed measurement
    # Sizes against references: the file on disk, and every fp32 weight read once per token
    # (the embedding is tied to lm_head, so it counts once; plus the rotary frequency buffers).
    weights = sum(f.stat().st_size for f in embedded.path.glob("*.safetensors"))
    assert speed["size_on_disk_mb"] == pytest.approx(weights / 1e6, abs=0.01)
    assert speed["parameters"] == 134_515_008
    assert buffers < 1024 and speed["weight_bytes_per_token"] == 4 * 134_515_008 + buffers
    assert speed["decode_roofline_tokens_per_s"] == pytest.approx(20e9 / speed["weight_bytes_per_token"], abs=0.01)
    assert speed["peak_rss_mb"] >= 4 * 134_515_008 / 2**20  # the fp32 weights are resident
