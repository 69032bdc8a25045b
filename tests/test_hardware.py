"""Hardware detection and the decode roofline (weight bytes counted by brute force)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from lmopt.hardware import (
    decode_roofline,
    detect_hardware,
    measure_bandwidth,
    peak_child_rss_mb,
    peak_rss_mb,
    weight_bytes_per_token,
)
from lmopt.models import tiny_llama

ACCELERATOR = torch.cuda.is_available() or torch.backends.mps.is_available()


def cpuinfo_flags() -> set[str]:
    """The first 'flags' line of /proc/cpuinfo (the kernel's list, read independently of lmopt)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


@pytest.mark.skipif(ACCELERATOR, reason="the CPU dtype rule applies only without an accelerator")
@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux /proc/cpuinfo")
def test_dtype_follows_the_cpu_flags():
    hw = detect_hardware()
    flags = cpuinfo_flags()
    assert hw.device == "cpu" and not hw.gpus
    assert set(hw.isa) <= flags
    assert hw.dtype == ("bfloat16" if {"avx512_bf16", "amx_bf16"} & flags else "float32")


def test_machine_facts_match_the_os():
    hw = detect_hardware()
    assert hw.logical_cores == os.cpu_count()
    assert hw.physical_cores == psutil.cpu_count(logical=False)
    env = os.environ.get("LMOPT_THREADS") or os.environ.get("OMP_NUM_THREADS")
    assert hw.threads == (int(env) if env else hw.physical_cores)
    if Path("/proc/meminfo").exists():
        mem_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        assert hw.memory_gb == pytest.approx(mem_kib / 2**20, abs=0.1)


def test_weight_bytes_count_the_tied_head_once_and_skip_an_untied_embedding():
    for tied in (True, False):
        model = tiny_llama(tie_word_embeddings=tied).model
        embed = model.get_input_embeddings().weight
        expected = sum(p.numel() * p.element_size() for p in model.parameters()
                       if tied or p is not embed)
        expected += sum(b.numel() * b.element_size() for b in model.buffers()
                        if b.dim() > 0 and b.numel() > 1)
        assert weight_bytes_per_token(model) == expected
        assert decode_roofline(model, 10.0) == pytest.approx(10.0e9 / expected)
    # bf16 halves every weight byte, so the roofline doubles.
    bf16 = tiny_llama().model.to(torch.bfloat16)
    fp32 = tiny_llama().model
    assert weight_bytes_per_token(bf16) * 2 == weight_bytes_per_token(fp32)


def test_peak_rss_is_at_least_the_current_rss_and_counts_children_in_mb():
    total_mb = psutil.virtual_memory().total / 2**20
    assert psutil.Process().memory_info().rss / 2**20 - 1 <= peak_rss_mb() <= total_mb
    subprocess.run([sys.executable, "-c", "x = bytearray(120 * 2**20); x[::4096] = b'1' * len(x[::4096])"],
                   check=True)
    assert 120 <= peak_child_rss_mb() <= total_mb  # KiB read as MB would be 1024x too large


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_the_peak_resets_to_the_current_size_and_a_freed_block_can_be_given_back():
    code = """
import json
from lmopt.hardware import current_rss_mb, peak_rss_mb, release_free_heap, reset_peak_rss
x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096])
high = peak_rss_mb()
del x
release_free_heap()
assert reset_peak_rss()
print(json.dumps([high, peak_rss_mb(), current_rss_mb()]))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    high, peak, now = json.loads(out)
    # the 200 MB block counted in the first peak; after its release and the reset the mark is the
    # current size again
    assert high >= 200 and peak < high - 150 and abs(peak - now) < 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_is_detected_and_chosen():
    hw = detect_hardware()
    assert hw.device == "cuda" and hw.gpus[0]["name"] == torch.cuda.get_device_name(0)
    assert hw.gpus[0]["memory_gb"] == round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    assert hw.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert measure_bandwidth(size_mb=512, device="cuda") > 200  # GB/s: any datacenter GPU
