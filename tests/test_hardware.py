"""Hardware detection and the decode roofline (weight bytes counted by brute force)."""

import subprocess
import sys

import psutil
import torch

from lmopt.hardware import decode_roofline, detect_hardware, peak_child_rss_mb, peak_rss_mb, weight_bytes_per_token
from lmopt.models import tiny_llama


def test_dtype_follows_the_cpu_flags():
    hw = detect_hardware()
    if hw.device == "cpu":
        native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(hw.isa))
        assert hw.dtype == ("bfloat16" if native_bf16 else "float32")
    assert hw.threads >= 1 and hw.memory_gb > 0


def test_weight_bytes_count_the_tied_head_once_and_skip_an_untied_embedding():
    for tied in (True, False):
        model = tiny_llama(tie_word_embeddings=tied).model
        embed = model.get_input_embeddings().weight
        expected = sum(p.numel() * p.element_size() for p in model.parameters()
                       if tied or p is not embed)
        expected += sum(b.numel() * b.element_size() for b in model.buffers()
                        if b.dim() > 0 and b.numel() > 1)
        assert weight_bytes_per_token(model) == expected
    bf16 = tiny_llama().model.to(torch.bfloat16)
    assert decode_roofline(bf16, 10.0) > decode_roofline(tiny_llama().model, 10.0)


def test_peak_rss_is_at_least_the_current_rss_and_counts_children_in_mb():
    assert peak_rss_mb() >= psutil.Process().memory_info().rss / 2**20 - 1
    subprocess.run([sys.executable, "-c", "x = bytearray(120 * 2**20); x[::4096] = b'1' * len(x[::4096])"],
                   check=True)
    assert peak_child_rss_mb() >= 120
