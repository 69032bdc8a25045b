"""Calibrate the decode roofline of this machine from microbenchmarks, and measure decode for comparison.

At batch 1 a PyTorch decode step on a CPU is far from the copy-bandwidth bound: each layer costs a fixed
time in Python, dispatch and small ops whatever its size, and a matrix-vector kernel streams weights
slower than a memory copy (more so for bf16, whose kernels convert as they go). The calibrated step is

    step = fixed_s + per_layer_s x layers + max(compute time, weight+KV bytes / (bandwidth x efficiency[dtype]))

with every term measured without running the planned model:
1. two random models as wide as the planned one (same hidden size, heads, MLP and attention kinds) with
   1 and up to 9 layers and a 512-token vocabulary decode at batch 1; each step minus the time of the probe's
   own matrices is overhead, which gives `fixed_s` and `per_layer_s` (a tiny llama stands in when
   the model's config is unknown);
2. the planned model's weight matrices (their real shapes, random values) multiplied by one vector each,
   in fp32 and in bf16: bytes / time over the copy bandwidth is `efficiency[dtype]` (int8 and int4 take
   bf16's: there is no faster CPU kernel for them in PyTorch to time).
So the measured decode of the model itself (fp32 and bf16, `measure_decode`) is a check out of sample.
Every figure is the median over rounds that each run every probe once (`interleaved`): on a shared
machine the load drifts, and interleaving lets the drift weigh on calibration and check alike.
"""

from __future__ import annotations

import copy
import functools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from lmopt.evaluate.speed import benchmark_speed
from lmopt.hardware import detect_hardware
from lmopt.io import write_json
from lmopt.models import LoadedModel, tiny_llama, tiny_tokenizer
from lmopt.select.hardware_table import Target
from lmopt.select.model_shape import ModelShape, shape_of_model
from lmopt.select.roofline import make_format
from lmopt.settings import lmopt_home

PROMPT_LEN = 32
PROBE_BYTES = 4e8
"""fp32 weight bytes the deeper probe model may take."""


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


class MatvecProbe:
    """Times one vector multiplied by each matrix of a model (real shapes, random values) in one dtype.
    Only the first `max_bytes` of matrices are allocated for large models; the time is scaled up."""

    def __init__(self, matrices: tuple[tuple[int, int], ...], dtype_name: str, max_bytes: float = 600e6):
        import torch  # lazy: see torch_threads

        dtype = getattr(torch, dtype_name)
        size = torch.finfo(dtype).bits // 8
        chosen, total = [], 0
        for rows, cols in matrices:
            if chosen and total + rows * cols * size > max_bytes:
                break
            chosen.append((rows, cols))
            total += rows * cols * size
        self.weights = [torch.randn(r, c, dtype=dtype) for r, c in chosen]
        self.vectors = {c: torch.randn(1, c, dtype=dtype) for _, c in chosen}
        self.scale = sum(r * c for r, c in matrices) * size / total
        self.one_pass()  # warm-up: page faults, kernel selection

    def one_pass(self) -> float:
        import torch  # lazy: see torch_threads

        start = time.perf_counter()
        with torch.inference_mode():
            for w in self.weights:
                torch.nn.functional.linear(self.vectors[w.shape[1]], w)
        return (time.perf_counter() - start) * self.scale

    def __call__(self, passes: int = 3) -> float:
        """Median seconds of `passes` passes over all matrices."""
        return statistics.median(self.one_pass() for _ in range(passes))


def probe_layers(shape: ModelShape) -> tuple[int, int]:
    """Depths of the two probe models: 1 and up to 9 layers (fewer for wide layers, 3 at least); the
    wider the span, the less timing noise the per-layer slope carries into a 30-layer estimate."""
    layer_bytes = 4 * shape.matrix_params / max(shape.layers, 1)
    return 1, max(3, min(9, shape.layers, int(PROBE_BYTES // max(layer_bytes, 1))))


def probe_model(config: Any | None, layers: int) -> LoadedModel:
    """A random model as wide as `config`'s (hidden size, heads, MLP, attention kinds) with `layers` layers
    and a 512-token vocabulary; a tiny llama when there is no config."""
    if config is None:
        return tiny_llama(num_layers=layers)
    # lazy: transformers' model classes take seconds to import (the CLI imports this package)
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:layers]
    config.vocab_size, config.tie_word_embeddings = len(tokenizer), True
    config.pad_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(config).float().eval()
    return LoadedModel(model, tokenizer, f"probe-{layers}-layers")


def calibration_probes(shape: ModelShape, threads: int, new_tokens: int = 32,
                       config: Any | None = None) -> dict[str, Callable[[], float]]:
    """The measurements a calibration needs, each a call returning one figure: decode tokens/s and fp32
    matrix time of a shallow and a deeper version of the model (`probe_model`), and the model's matrices timed
    in fp32 and bf16."""
    probes: dict[str, Callable[[], float]] = {}
    for layers in probe_layers(shape):
        model = probe_model(config, layers)
        probes[f"probe_{layers}_layers_tok_s"] = functools.partial(measure_decode, model, threads, new_tokens, 1)
        probes[f"probe_{layers}_layers_matvec_s"] = MatvecProbe(shape_of_model(model.model).matrices, "float32")
    for fmt, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        probes[f"matvec_{fmt}_s"] = MatvecProbe(shape.matrices, dtype)
    return probes


def interleaved(probes: dict[str, Callable[[], float]], rounds: int, threads: int) -> dict[str, float]:
    """The median of each probe over `rounds` rounds that run every probe once: on a shared machine the
    load drifts, and interleaving spreads the drift over every figure alike."""
    samples: dict[str, list[float]] = {name: [] for name in probes}
    with torch_threads(threads):
        for _ in range(rounds):
            for name, probe in probes.items():
                samples[name].append(probe())
    return {name: statistics.median(values) for name, values in samples.items()}


def calibration_from(measurements: dict[str, float], shape: ModelShape, target: Target,
                     threads: int) -> Calibration:
    """The calibration the probes' figures give (see the module docstring)."""
    # a probe's step minus its own matrix time is overhead (both with the probe's weights as warm in
    # cache as they are during its decode)
    fixed, per_layer = fit_overhead({layers: 1 / measurements[f"probe_{layers}_layers_tok_s"]
                                     - measurements[f"probe_{layers}_layers_matvec_s"]
                                     for layers in probe_layers(shape)})
    efficiency = {}
    for fmt in ("fp32", "bf16"):
        ideal = sum(make_format(fmt).matrix_bytes(r, c) for r, c in shape.matrices) / (target.bandwidth_gbs * 1e9)
        efficiency[fmt] = round(min(1.0, ideal / measurements[f"matvec_{fmt}_s"]), 4)
    kept = {k: round(v, 6) for k, v in measurements.items() if k.startswith(("probe_", "matvec_"))}
    return Calibration(threads, fixed, per_layer, efficiency, shape.name, kept)


def calibrate(shape: ModelShape, target: Target, threads: int, new_tokens: int = 32, rounds: int = 5,
              config: Any | None = None) -> Calibration:
    """Time the probe models and `shape`'s matrices on this machine (see the module docstring)."""
    probes = calibration_probes(shape, threads, new_tokens, config)
    return calibration_from(interleaved(probes, rounds, threads), shape, target, threads)


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
