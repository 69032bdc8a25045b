"""GPU tier (`pytest -m gpu`, skipped without CUDA): evaluation on CUDA equals evaluation on the CPU.

(CUDA detection is checked in tests/test_hardware.py.)
"""

import pytest
import torch

from lmopt.data import pydoc_text
from lmopt.evaluate import perplexity
from lmopt.evaluate.loglik import loglikelihoods
from lmopt.evaluate.speed import benchmark_speed
from lmopt.hardware import weight_bytes_per_token
from lmopt.models import tiny_llama

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


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
                            bandwidth_gbs=1000.0)
    assert speed["decode_tokens_per_s_bs1"] > 0 and speed["decode_tokens_per_s_bs8"] > 0
    assert speed["dtype"] == "bfloat16"
    # bf16 weights on the device: half the bytes of the same model in fp32, counted by brute force.
    fp32_bytes = weight_bytes_per_token(tiny_llama(hidden_size=256, num_layers=4).model)
    assert speed["weight_bytes_per_token"] * 2 == fp32_bytes
    assert speed["decode_roofline_tokens_per_s"] == pytest.approx(1000e9 / (fp32_bytes / 2), abs=0.01)
