"""The real embedded model: conversion, perplexity, bf16 agreement, accuracy above chance, speed keys."""

import pytest
import torch

from lmopt.data import pydoc_text
from lmopt.evaluate import evaluate, perplexity
from lmopt.evaluate.speed import benchmark_speed

pytestmark = pytest.mark.integration


def test_embedded_model_shape(embedded):
    config = embedded.model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (576, 30, 3)
    assert sum(p.numel() for p in embedded.model.parameters()) == 134_515_008
    assert embedded.path and (embedded.path / "model.safetensors").exists()


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
    speed = benchmark_speed(embedded.model, embedded.tokenizer, prefill_len=64, new_tokens=4,
                            batch_sizes=(1,), repeats=1, path=embedded.path, bandwidth_gbs=20.0)
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s_bs1", "time_to_first_token_s", "peak_rss_mb",
                "size_on_disk_mb", "decode_roofline_tokens_per_s"):
        assert speed[key] > 0, key
