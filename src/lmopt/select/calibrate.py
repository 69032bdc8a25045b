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
   in fp32 and bf16 (nn.Linear's kernels) and as lmopt's int8 and int4 `QuantLinear` layers (random
   codes, the kernels the autotuner picks, bf16 vectors): bytes / time over the copy bandwidth is
   `efficiency[format]`.
So the measured decode of the model itself (`measure_decode`; int8 and int4 with random codes in every
Linear, which runs at the speed of real ones) is a check out of sample.
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


BYTES_PER_WEIGHT = {"float32": 4, "bfloat16": 2, "int8": 1, "int4": 0.5}
FORMAT_KINDS = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8", "int4": "int4"}
"""Plan format -> what `MatvecProbe` times for it."""


def random_quant_linear(rows: int, cols: int, bits: int, group_size: int | None, bias: Any = None) -> Any:
    """An lmopt `QuantLinear` (rows x cols) of random codes, prepared as `quantize` leaves it for serving
    (backend `auto`: the autotuner picks the kernel per row count). Speed does not depend on the values,
    and random codes skip the minutes RTN takes on a 135M model."""
    import torch  # lazy: see torch_threads

    from lmopt.compress.quantize.algorithms import effective_group  # lazy: the kernels load on first use
    from lmopt.compress.quantize.runtime import QuantLinear

    group = effective_group(cols, group_size)  # None: one scale per output row
    groups = -(-cols // group)  # a short last group counts
    layer = QuantLinear.from_codes(torch.randint(0, 2**bits, (rows, cols)), torch.rand(rows, groups) * 1e-2 + 1e-3,
                                   torch.full((rows, groups), 2 ** (bits - 1)), bits, group, bias)
    layer.prepare("auto")
    return layer


class MatvecProbe:
    """Times one vector multiplied by each matrix of a model (real shapes, random values) in one format:
    a dense weight (`float32`, `bfloat16`: nn.Linear's kernel) or lmopt's `QuantLinear` (`int8` with one
    scale per row, `int4` in groups of `group_size`; bf16 vectors, the kernels the autotuner picks).
    Only the first `max_bytes` of matrices are allocated for large models; the time is scaled up."""

    def __init__(self, matrices: tuple[tuple[int, int], ...], kind: str, max_bytes: float = 600e6,
                 group_size: int = 128):
        import torch  # lazy: see torch_threads

        size = BYTES_PER_WEIGHT[kind]
        chosen, total = [], 0
        for rows, cols in matrices:
            if chosen and total + rows * cols * size > max_bytes:
                break
            chosen.append((rows, cols))
            total += rows * cols * size
        if kind in ("float32", "bfloat16"):
            dtype = getattr(torch, kind)
            self.weights = [torch.randn(r, c, dtype=dtype) for r, c in chosen]
        else:
            dtype = torch.bfloat16  # the activations of lmopt's quantized models
            bits, group = (8, None) if kind == "int8" else (4, group_size)
            self.weights = [random_quant_linear(r, c, bits, group) for r, c in chosen]
        self.vectors = {c: torch.randn(1, c, dtype=dtype) for _, c in chosen}
        self.scale = sum(r * c for r, c in matrices) * size / total
        self.one_pass()  # warm-up: page faults, kernel selection

    def one_pass(self) -> float:
        import torch  # lazy: see torch_threads

        linear = torch.nn.functional.linear
        start = time.perf_counter()
        with torch.inference_mode():
            for w in self.weights:
                if isinstance(w, torch.Tensor):
                    linear(self.vectors[w.shape[1]], w)
                else:
                    w(self.vectors[w.in_features])
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


def calibration_probes(shape: ModelShape, threads: int, new_tokens: int = 32, config: Any | None = None,
                       group_size: int = 128) -> dict[str, Callable[[], float]]:
    """The measurements a calibration needs, each a call returning one figure: decode tokens/s and fp32
    matrix time of a shallow and a deeper version of the model (`probe_model`), and the model's matrices timed
    in fp32, bf16, int8 and int4 (groups of `group_size`)."""
    probes: dict[str, Callable[[], float]] = {}
    for layers in probe_layers(shape):
        model = probe_model(config, layers)
        probes[f"probe_{layers}_layers_tok_s"] = functools.partial(measure_decode, model, threads, new_tokens, 1)
        probes[f"probe_{layers}_layers_matvec_s"] = MatvecProbe(shape_of_model(model.model).matrices, "float32")
    for fmt, kind in FORMAT_KINDS.items():
        probes[f"matvec_{fmt}_s"] = MatvecProbe(shape.matrices, kind, group_size=group_size)
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
                     threads: int, group_size: int = 128) -> Calibration:
    """The calibration the probes' figures give (see the module docstring)."""
    # a probe's step minus its own matrix time is overhead (both with the probe's weights as warm in
    # cache as they are during its decode)
    fixed, per_layer = fit_overhead({layers: 1 / measurements[f"probe_{layers}_layers_tok_s"]
                                     - measurements[f"probe_{layers}_layers_matvec_s"]
                                     for layers in probe_layers(shape)})
    efficiency = {}
    for fmt in FORMAT_KINDS:
        fmt_bytes = make_format(fmt, group_size).matrix_bytes
        ideal = sum(fmt_bytes(r, c) for r, c in shape.matrices) / (target.bandwidth_gbs * 1e9)
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
