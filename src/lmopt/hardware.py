"""What this machine is and what lmopt will use on it: device, dtype, threads, memory bandwidth.

`detect_hardware()` reads the CPU model and ISA flags, memory and GPUs; `measure_bandwidth()` times
large copies; `decode_roofline()` is the batch-1 decode speed limit: bandwidth divided by the bytes
of weights read per generated token; `peak_rss_mb()` is this process's memory high-water mark.

torch is imported inside the functions that use it: the CLI imports this module at start-up
(`lmopt hw`, `lmopt --help`), and importing torch takes about a second.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import psutil

ISA_FLAGS = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimd", "sve"]


@dataclass
class Hardware:
    cpu: str
    physical_cores: int
    logical_cores: int
    isa: list[str]
    memory_gb: float
    gpus: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    bandwidth_gbs: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_info() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name in ("", platform.machine(), platform.processor()):
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, flags


def cpu_flags() -> set[str]:
    """Every ISA flag the CPU reports (/proc/cpuinfo), e.g. for keying code compiled for this CPU."""
    return _cpu_info()[1]


def _gpus() -> list[dict[str, Any]]:
    import torch  # lazy: start-up cost (module docstring)

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                         "kind": "cuda", "bf16": torch.cuda.is_bf16_supported()})
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        gpus.append({"index": 0, "name": "Apple MPS", "memory_gb": None, "kind": "mps", "bf16": True})
    return gpus


@lru_cache(maxsize=1)
def detect_hardware() -> Hardware:
    """Describe this machine and the defaults lmopt picks for it (no bandwidth measurement)."""
    name, flags = _cpu_info()
    isa = [f for f in ISA_FLAGS if f in flags]
    gpus = _gpus()
    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    hw = Hardware(cpu=name, physical_cores=physical, logical_cores=os.cpu_count() or physical, isa=isa,
                  memory_gb=round(psutil.virtual_memory().total / 2**30, 1), gpus=gpus)
    if gpus and gpus[0]["kind"] == "cuda":
        hw.device, hw.dtype = "cuda", "bfloat16" if gpus[0]["bf16"] else "float16"
    elif gpus:
        hw.device, hw.dtype = "mps", "float16"
    else:
        # Native bf16 (AVX512-BF16 or AMX) makes bf16 matmuls ~2x faster than fp32 at the same
        # perplexity; without it bf16 is emulated and slower, so fp32 stays the default.
        hw.dtype = "bfloat16" if {"avx512_bf16", "amx_bf16"} & flags else "float32"
    hw.threads = _default_threads(physical)
    return hw


def _default_threads(physical: int) -> int:
    env = os.environ.get("LMOPT_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return int(env) if env else physical


def default_dtype() -> Any:
    """The torch dtype lmopt uses when the user does not choose one."""
    import torch  # lazy: start-up cost (module docstring)

    return getattr(torch, detect_hardware().dtype)


def apply_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads` (default: physical cores) and return it."""
    import torch  # lazy: start-up cost (module docstring)

    threads = threads or detect_hardware().threads
    torch.set_num_threads(threads)
    return threads


def measure_bandwidth(size_mb: int = 256, repeats: int = 5, device: str = "cpu") -> float:
    """Achievable memory bandwidth in GB/s: best of `repeats` copies of a `size_mb` buffer.

    A copy reads and writes each byte, so bytes moved = 2 x size (the STREAM 'copy' convention).
    """
    import torch  # lazy: start-up cost (module docstring)

    n = size_mb * (1 << 20) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def weight_bytes_per_token(model: Any) -> int:
    """Bytes of weights a batch-1 decode step reads: every parameter and buffer of the matmuls.

    The input embedding is a row lookup (one row per token), so it counts only when it is tied
    to the lm_head, which reads the whole matrix.
    """
    embed = model.get_input_embeddings().weight
    lm_head = model.get_output_embeddings()
    tied = lm_head is not None and getattr(lm_head, "weight", None) is embed
    total = 0
    seen: set[int] = set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen or (tensor is embed and not tied) or tensor.dim() == 0:
            continue
        seen.add(id(tensor))
        if tensor.dim() >= 2 or tensor.numel() > 1:
            total += tensor.numel() * tensor.element_size()
    return total


def decode_roofline(model: Any, bandwidth_gbs: float) -> float:
    """Upper bound on batch-1 decode tokens/s: bandwidth / bytes of weights per token."""
    return bandwidth_gbs * 1e9 / max(1, weight_bytes_per_token(model))


def _maxrss_mb(who: int) -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    return resource.getrusage(who).ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)


def _status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MB (of 2**20 bytes); None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, in MB (includes everything loaded so far,
    or since the last `reset_peak_rss`).

    Linux's VmHWM first: a child started by vfork (Python's subprocess) inherits its parent's
    ru_maxrss, so a 200 MB worker of a 1.5 GB parent would report 1.5 GB from getrusage."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else _maxrss_mb(resource.RUSAGE_SELF)


def current_rss_mb() -> float | None:
    """This process's resident memory now, in MB; None without /proc."""
    return _status_mb("VmRSS")


def release_free_heap() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc's malloc_trim), so that a
    measurement's working memory shows as a rise of the resident size instead of reusing pages kept
    from earlier work. Without glibc nothing is trimmed (the rise may be under-counted)."""
    gc.collect()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)


def reset_peak_rss() -> bool:
    """Lower this process's resident-memory high-water mark to its current size (Linux: clear_refs 5);
    False where unsupported (the mark stays the lifetime one)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_child_rss_mb() -> float:
    """High-water mark of the largest finished child process (e.g. a worker), in MB."""
    return _maxrss_mb(resource.RUSAGE_CHILDREN)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers in glibc's malloc.h
MMAP_THRESHOLD_MAX_MB = 32  # glibc's ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX), where its dynamic threshold ends


def _mallopt(param: int, value: int) -> bool:
    """glibc's mallopt(param, value); False where there is no glibc or it refuses the value."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(param, value))
    except (OSError, AttributeError, ctypes.ArgumentError):
        return False


def set_malloc_mmap_threshold(mb: float) -> bool:
    """Make glibc's malloc give every allocation of at least `mb` MB (at most 32) its own mapping,
    unmapped on free. True when applied (glibc only; elsewhere, or for a value glibc refuses, nothing
    changes and the result is False).

    By default glibc raises this threshold up to 32 MB as large blocks are freed, so the (tokens x
    hidden) activations a training step allocates and frees come from the heap, where freed blocks
    fragment and stay resident: a LoRA step of 4 x 512 tokens on the 135M model peaked at 4.4 GB for
    1.3 GB of live tensors. glibc cannot return to its dynamic threshold afterwards; `bounded_heap`
    puts the ceiling back instead."""
    return _mallopt(M_MMAP_THRESHOLD, int(min(mb, MMAP_THRESHOLD_MAX_MB) * 2**20))


@contextmanager
def bounded_heap(mb: float | None) -> Iterator[float | None]:
    """Within the block, allocations of at least `mb` MB are mapped on their own (see
    `set_malloc_mmap_threshold`); yields the threshold applied, or None (`mb` None or 0, or not glibc).
    Afterwards the thresholds are where glibc's dynamic ones end in any process that frees large
    tensors: mmap threshold at its 32 MB ceiling, trim threshold twice that (freed memory at the
    heap's top is kept for reuse), so the rest of the process (calibration, measurement) runs as it
    would have."""
    applied = bool(mb) and set_malloc_mmap_threshold(mb)
    try:
        yield mb if applied else None
    finally:
        if applied:
            set_malloc_mmap_threshold(MMAP_THRESHOLD_MAX_MB)
            _mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX_MB * 2**20)
