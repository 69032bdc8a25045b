"""Calibrate the decode roofline of this machine from microbenchmarks, and measure decode for comparison.

At batch 1 a PyTorch decode step on a CPU is far from the copy-bandwidth bound: each layer costs a fixed
time in Python, dispatch and small ops whatever its size, and a matrix-vector kernel streams weights
slower than a memory copy (more so for bf16, whose kernels convert as they go). The calibrated step is

    step = fixed_s + per_layer_s x layers + max(compute time, weight+KV bytes / (bandwidth x efficiency[dtype]))

with every term measured without running the planned model:
1. two tiny random llamas (2 and 8 layers, kilobytes of weights) decode at batch 1: their step time is
   all overhead, which gives `fixed_s` and `per_layer_s`;
2. the planned model's weight matrices (their real shapes, random values) multiplied by one vector each,
   in fp32 and in bf16: bytes / time over the copy bandwidth is `efficiency[dtype]` (int8 and int4 take
   bf16's: there is no faster CPU kernel for them in PyTorch to time).
So the measured decode of the model itself (fp32 and bf16, `measure_decode`) is a check out of sample.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from lmopt.evaluate.speed import benchmark_speed
from lmopt.hardware import detect_hardware
from lmopt.io import write_json
from lmopt.models import LoadedModel, tiny_llama
from lmopt.select.hardware_table import Target
from lmopt.select.model_shape import ModelShape
from lmopt.select.roofline import make_format
from lmopt.settings import lmopt_home

PROMPT_LEN = 32
TINY_LAYERS = (2, 8)


@dataclass(frozen=True)
class Calibration:
    """Per-step overhead and achieved weight-streaming share of this machine at `threads` threads."""

    threads: int
    fixed_s: float
    per_layer_s: float
    efficiency: dict[str, float]
    """Format name -> achieved matrix-vector streaming rate / copy bandwidth."""
    reference: str
    """The model whose matrix shapes were timed."""
    measurements: dict[str, float]
    """The raw timings: tiny-model decode tokens/s and matrix-vector seconds per format."""

    def overhead_s(self, layers: int) -> float:
        return self.fixed_s + self.per_layer_s * layers

    def efficiency_of(self, fmt: str) -> float:
        return self.efficiency.get(fmt, self.efficiency.get("bf16", 1.0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measured_context(new_tokens: int) -> int:
    """The mean KV length during a `benchmark_speed` decode (prompt + half the new tokens)."""
    return PROMPT_LEN + new_tokens // 2


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    import torch  # lazy: lmopt.select is imported by the CLI at start-up; torch takes ~1 s

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_decode(loaded: LoadedModel, threads: int, new_tokens: int = 32, repeats: int = 3) -> float:
    """Batch-1 greedy decode tokens/s of a loaded model with `threads` torch threads."""
    with torch_threads(threads):
        result = benchmark_speed(loaded.model, loaded.tokenizer, prefill_len=16, prompt_len=PROMPT_LEN,
                                 new_tokens=new_tokens, batch_sizes=(1,), repeats=repeats)
    return float(result["decode_tokens_per_s_bs1"])


def fit_overhead(step_s: dict[int, float]) -> tuple[float, float]:
    """(fixed_s, per_layer_s) of the line through (layers, step seconds) of two tiny models."""
    (l1, t1), (l2, t2) = sorted(step_s.items())
    per_layer = max(0.0, (t2 - t1) / (l2 - l1))
    return max(0.0, t1 - per_layer * l1), per_layer


def matvec_seconds(matrices: tuple[tuple[int, int], ...], dtype_name: str, repeats: int = 3,
                   max_bytes: float = 600e6) -> float:
    """Seconds to multiply one vector by each matrix (best of `repeats`), scaled up when only the first
    `max_bytes` of matrices were allocated (large models)."""
    import torch  # lazy: see torch_threads

    dtype = getattr(torch, dtype_name)
    size = torch.finfo(dtype).bits // 8
    chosen, total = [], 0
    for rows, cols in matrices:
        if chosen and total + rows * cols * size > max_bytes:
            break
        chosen.append((rows, cols))
        total += rows * cols * size
    weights = [torch.randn(r, c, dtype=dtype) for r, c in chosen]
    vectors = {c: torch.randn(1, c, dtype=dtype) for _, c in chosen}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first pass warms up (page faults, kernel selection)
            start = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(vectors[w.shape[1]], w)
            best = min(best, time.perf_counter() - start)
    all_bytes = sum(r * c for r, c in matrices) * size
    return best * all_bytes / total


def calibrate(shape: ModelShape, target: Target, threads: int, new_tokens: int = 32) -> Calibration:
    """Time the tiny models and `shape`'s matrices on this machine (see the module docstring)."""
    measurements: dict[str, float] = {}
    tiny_steps = {}
    with torch_threads(threads):
        for layers in TINY_LAYERS:
            rate = measure_decode(tiny_llama(num_layers=layers), threads, new_tokens)
            measurements[f"tiny_llama_{layers}_layers_tok_s"] = rate
            tiny_steps[layers] = 1 / rate
        efficiency = {}
        for fmt, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
            seconds = matvec_seconds(shape.matrices, dtype)
            measurements[f"matvec_{fmt}_s"] = seconds
            ideal = sum(make_format(fmt).matrix_bytes(r, c) for r, c in shape.matrices) / (target.bandwidth_gbs * 1e9)
            efficiency[fmt] = round(min(1.0, ideal / seconds), 4)
    fixed, per_layer = fit_overhead(tiny_steps)
    return Calibration(threads, fixed, per_layer, efficiency, shape.name, measurements)


def _cache_key(threads: int) -> str:
    import torch  # lazy: see torch_threads

    return f"{detect_hardware().cpu}|threads={threads}|torch={torch.__version__}"


def _cache_path() -> Any:
    return lmopt_home() / "select" / "calibration.json"


def load_calibration(threads: int) -> Calibration | None:
    """The calibration stored for this CPU, thread count and torch version, or None."""
    path = _cache_path()
    stored = json.loads(path.read_text()) if path.exists() else {}
    entry = stored.get(_cache_key(threads))
    return Calibration(**entry) if entry else None


def store_calibration(calibration: Calibration) -> None:
    path = _cache_path()
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[_cache_key(calibration.threads)] = calibration.to_dict()
    write_json(path, stored)
