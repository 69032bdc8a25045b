"""GPU tier (`pytest -m gpu`, skipped without CUDA): device detection, CUDA results equal CPU results."""

import pytest
import torch

from lmopt.data import pydoc_text
from lmopt.evaluate import perplexity
from lmopt.evaluate.loglik import loglikelihoods
from lmopt.evaluate.speed import benchmark_speed
from lmopt.hardware import detect_hardware, measure_bandwidth
from lmopt.models import tiny_llama

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_is_detected_and_chosen():
    hw = detect_hardware()
    assert hw.device == "cuda" and hw.gpus and hw.gpus[0]["memory_gb"] > 1
    assert hw.dtype in ("bfloat16", "float16")
    assert measure_bandwidth(size_mb=512, device="cuda") > 200  # GB/s: any datacenter GPU


def test_cuda_perplexity_and_loglik_match_cpu():
    cpu = tiny_llama(hidden_size=128, num_layers=3)
    gpu = tiny_llama(hidden_size=128, num_layers=3)
    gpu.model.to("cuda")
    text = pydoc_text("eval")[:8000]
    a = perplexity(cpu.model, cpu.tokenizer, text, seq_len=128, limit=4)
    b = perplexity(gpu.model, gpu.tokenizer, text, seq_len=128, limit=4)
    assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-3)
    requests = [("def f(x):", " return x"), ("The answer is", " 42")]
    for (la, _), (lb, _) in zip(loglikelihoods(cpu.model, cpu.tokenizer, requests),
                                loglikelihoods(gpu.model, gpu.tokenizer, requests), strict=True):
        assert lb == pytest.approx(la, abs=1e-3)


def test_speed_runs_on_cuda():
    loaded = tiny_llama(hidden_size=256, num_layers=4)
    loaded.model.to("cuda", torch.bfloat16)
    speed = benchmark_speed(loaded.model, loaded.tokenizer, prefill_len=256, new_tokens=16, repeats=2,
                            bandwidth_gbs=measure_bandwidth(device="cuda"))
    assert speed["decode_tokens_per_s_bs8"] > speed["decode_tokens_per_s_bs1"] > 0
