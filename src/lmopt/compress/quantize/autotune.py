"""Kernel choice by measurement: which path computes a quantized linear at each row count, on this CPU.

A `QuantLinear` (runtime.py) can compute y = x W^T several ways ("paths"):
- its low-bit kernels (`int4`, `int8`, or oneDNN `w8a8` for layers quantized with int8 activations,
  see kernels.py), and lmopt's C kernels `q4a8`/`q8a8` where they are built (native.py: they round
  activations to int8 per block of 32, as llama.cpp does);
- a dense `bf16` or `fp32` weight: kept in memory when the layer may cache one (`cache_dense`; the
  engine allows it), else de-quantized on every call;
- `dequant`: de-quantize into the activation dtype on every call (the reference, explicit only).
Which is fastest depends on the CPU (AMX, AVX512-BF16, VNNI or none of them), the layer's shape and
the number of rows: the low-bit kernels read 2-4x fewer bytes and tend to win at decode, the dense
GEMM at prompt chunks, and on some CPUs the dense path may win everywhere. So a layer prepared with
backend `auto` is timed once per distinct layout and shape at ROWS rows (decode at batch 1, 8, 32
and a 512-token prompt chunk), and `decide` keeps the fastest per row range. A dense path is always
a candidate, so with a dense copy allowed a quantized layer is never slower than the dense layer
(beyond MARGIN, which breaks near-ties towards the kernel).

Timings (not decisions, so that `cache_dense` can change without measuring again) are cached as
JSON in `$LMOPT_HOME/kernels/<cpu model>-torch-<version>.json`, keyed by layout, shape and thread
count, and measured again when lmopt's C sources change (`lmopt.native.source_key`): a model costs
seconds once per machine. Layers under MIN_WEIGHTS weights (timings would be call overhead and
noise) and layers off the CPU get the fixed default plan (kernel up to 32 rows, dense bf16 above);
`LMOPT_AUTOTUNE=0` turns measurement off everywhere. `kernel_plan(model)` lists which path each
layer class runs and why.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lmopt.hardware import detect_hardware
from lmopt.io import write_json
from lmopt.native import source_key
from lmopt.settings import lmopt_home

ROWS = (1, 8, 32, 512)
"""Row counts timed: batch-1/8/32 decode steps and a prompt chunk (the engine's default)."""
MAX_ROWS = 1 << 62
MIN_WEIGHTS = 1 << 16
"""Layers smaller than this (tiny test models) keep the default plan without measuring."""
KERNELS = ("int4", "int8", "w8a8", "q4a8", "q8a8")
DENSE = {"bf16": torch.bfloat16, "fp32": torch.float32}
TIMING_METHOD = 5
"""Version of the timing procedure: a cache written by another one is measured again (method 1 timed
the first call with its one-time costs and could reject the fastest path; method 2 timed the slower
4-bit de-quantization that preceded unpacking by nibbles; method 3 did not time the C kernels;
method 4 timed them before their multi-row path)."""
MARGIN = 0.03
"""A dense path must beat an exact low-bit kernel by this fraction to replace it (timing noise; the
kernel reads fewer bytes and needs no dense copy), and a kernel that rounds activations to int8
(APPROXIMATE) must beat the exact kernels by it to be chosen."""
APPROXIMATE = ("q4a8", "q8a8")
"""Kernels that round activations to int8 (lmopt's C kernels): never chosen on a near-tie with an
exact kernel, and only as fast or faster than the dense path."""


@dataclass(frozen=True)
class Plan:
    """Which path runs a layer for each row count: `tiers` ((most rows, path), ...) ascending, the
    last one unbounded; `dense` the dense weight dtype some tier uses ("bf16"/"fp32") or None."""

    tiers: tuple[tuple[int, str], ...]
    dense: str | None
    source: str
    """measured (now), cached (timings from $LMOPT_HOME), default, explicit, or stacked (from the
    stacked q/k/v or gate/up layer the serving engine runs in its place)."""
    why: str

    def path(self, rows: int) -> str:
        for limit, path in self.tiers:
            if rows <= limit:
                return path
        return self.tiers[-1][1]

    def describe(self, cached: bool) -> str:
        """e.g. 'rows 1-16: int4; 17+: bf16 (dense copy)'."""
        parts, low = [], 1
        for limit, path in self.tiers:
            span = f"{low}+" if limit >= MAX_ROWS else (f"{low}" if limit == low else f"{low}-{limit}")
            if path in DENSE:
                path += " (dense copy)" if cached else " (de-quantized per call)"
            parts.append(f"{span}: {path}")
            low = limit + 1
        return "rows " + "; ".join(parts)


def default_plan(backend: str, dense_rows: int = 32, source: str = "default", why: str = "") -> Plan:
    """The fixed plan: the int4/int8 kernel up to `dense_rows` rows and a dense bf16 weight above
    (the kernels are fast for few rows, slow for many); w8a8 and dequant at every row count."""
    if backend in ("int4", "int8", "q4a8", "q8a8"):
        return Plan(((dense_rows, backend), (MAX_ROWS, "bf16")), "bf16", source, why)
    return Plan(((MAX_ROWS, backend),), None, source, why)


def decide(timings: dict[str, Any], kernels: str | Sequence[str] | None, cache_dense: bool,
           margin: float = MARGIN) -> Plan:
    """The fastest path per row range from `timings` (pure; see `measure` for the layout).

    `kernels` are the low-bit kernels the layer can run (one name, several, or None); timings of
    others are ignored. At each row count the fastest of them competes with the dense path. A dense
    path costs its matmul when the layer may keep a dense copy, else matmul + de-quantizing the
    weight on the call. One dense dtype per layer (the one whose plan, with the kernels, comes
    closest to the best at every row count), so at most one copy is kept. Each measured row count
    owns the rows up to the geometric mean with the next (1 -> 1-2, 8 -> 3-16, 32 -> 17-128,
    512 -> 129+)."""
    rows, paths, per_call = timings["rows"], timings["paths"], timings.get("dequant", {})
    kernels = [k for k in _names(kernels) if k in paths]

    def cost(path: str, i: int) -> float:
        return paths[path][i] + (0.0 if path in KERNELS or cache_dense else per_call.get(path, 0.0))

    def fastest_kernel(i: int) -> str | None:
        """The fastest kernel, where one that rounds activations must beat the exact ones by `margin`
        (a near-tie is not worth its rounding)."""
        exact = [k for k in kernels if k not in APPROXIMATE]
        best_exact = min(exact, key=lambda k: cost(k, i)) if exact else None
        rounding = [k for k in kernels if k in APPROXIMATE and
                    (best_exact is None or cost(k, i) * (1 + margin) < cost(best_exact, i))]
        return min(rounding, key=lambda k: cost(k, i)) if rounding else best_exact

    denses = [d for d in DENSE if d in paths]
    if not denses and not kernels:
        raise ValueError("timings hold neither the layer's kernels nor a dense path")
    n = len(rows)
    best = [min(cost(p, i) for p in [*denses, *kernels]) for i in range(n)]

    def shortfall(d: str) -> float:  # how far a plan with dense dtype d (and the kernels) is from the best
        return sum(min([cost(d, i), *(cost(k, i) for k in kernels)]) / best[i] for i in range(n))
    dense = min(denses, key=shortfall) if denses else None
    choice = []
    for i in range(n):
        kernel = fastest_kernel(i)
        # an exact kernel wins near-ties against the dense path (fewer bytes, no copy); one that
        # rounds activations has to be at least as fast
        tie = 0.0 if kernel in APPROXIMATE else margin
        keep_kernel = kernel is not None and (dense is None or cost(kernel, i) <= cost(dense, i) * (1 + tie))
        choice.append(kernel if keep_kernel else dense)
    limits = [math.isqrt(rows[i] * rows[i + 1]) for i in range(len(rows) - 1)] + [MAX_ROWS]
    tiers: list[tuple[int, str]] = []
    for limit, path in zip(limits, choice, strict=True):
        if tiers and tiers[-1][1] == path:
            tiers.pop()
        tiers.append((limit, path))
    used_dense = dense if dense in choice else None
    return Plan(tuple(tiers), used_dense, "measured", _explain(timings, kernels, denses, cache_dense))


def _names(kernels: str | Sequence[str] | None) -> list[str]:
    """`decide`'s and `measure`'s kernels argument (one name, several, or None) as a list."""
    return [kernels] if isinstance(kernels, str) else list(kernels or [])


def _explain(timings: dict[str, Any], kernels: list[str], denses: list[str], cache_dense: bool) -> str:
    rows, paths = timings["rows"], timings["paths"]
    ms = lambda values: "/".join(f"{v * 1e3:.3g}" for v in values)  # noqa: E731
    text = f"ms at {'/'.join(map(str, rows))} rows: " + ", ".join(
        f"{p} {ms(paths[p])}" for p in [*kernels, *denses])
    if not cache_dense and denses:
        dq = timings.get("dequant", {})
        text += "; no dense copy allowed, de-quantizing costs " + ", ".join(
            f"{d} {dq.get(d, 0) * 1e3:.3g}" for d in denses) + " ms per call"
    if not kernels:
        text += "; no low-bit kernel for this layout"
    return text


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _time_call(fn: Callable[[], Any], give_up: float) -> float:
    """Seconds per call of fn, the best of a few repetitions, each long enough for the timer. One
    untimed call first: it pays one-time costs (oneDNN primitive creation, first-touch allocation of
    the output) that can be 1,000x a 1-row call and would otherwise make a fast path look slow. A
    first timed call slower than `give_up` (it cannot win) or than 50 ms (two calls tell enough)
    ends it early."""
    fn()  # warm-up, not timed
    first = _timed(fn)[1]
    if first > give_up:
        return first
    second = _timed(fn)[1]
    if first > 0.05:
        return min(first, second)
    calls, best = max(1, math.ceil(2e-3 / max(second, 1e-7))), min(first, second)
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def measure(layer: Any, kernels: str | Sequence[str] | None, rows: tuple[int, ...] = ROWS) -> dict[str, Any]:
    """Time `layer.run_path` for its kernels (if any) and each dense dtype at each row count, and
    de-quantizing the weight into each dense dtype (one call). Returns {"rows": [...], "paths":
    {path: [seconds per row count]}, "dequant": {dtype: seconds}}.

    At each row count the previous one's winner goes first, so a candidate far slower than it can
    be given up after one call (at least 5 ms: shorter calls are cheap to time properly)."""
    out: dict[str, Any] = {"rows": list(rows), "paths": {}, "dequant": {}}
    order = [*_names(kernels), *DENSE]
    with torch.inference_mode():
        weights = {}
        for name, dtype in DENSE.items():
            weights[name], out["dequant"][name] = _timed(lambda dtype=dtype: layer.dequantize(dtype))
        for n in rows:
            best = math.inf
            for path in order:
                x = torch.randn(n, layer.in_features, dtype=torch.float32 if path in ("fp32", "w8a8")
                                else torch.bfloat16)
                seconds = _time_call(lambda p=path, x=x: layer.run_path(p, x, weights.get(p)),
                                     max(3 * best, 5e-3))
                out["paths"].setdefault(path, []).append(seconds)
                best = min(best, seconds)
            order.sort(key=lambda p: out["paths"][p][-1])
    return out


def signature(layer: Any) -> str:
    """What the timings depend on: kernel layout, shape, thread count."""
    per_channel = layer.group_size >= layer.in_features
    asym = layer.backend == "int8" and bool((layer.zeros != 128).any())  # int8 adds a correction GEMV
    return (f"{layer.backend}|{layer.bits}b|{'ch' if per_channel else f'g{layer.group_size}'}"
            f"{'|asym' if asym else ''}{'|act8' if layer.act_quant else ''}"
            f"|{layer.out_features}x{layer.in_features}|t{torch.get_num_threads()}")


def cache_file() -> Path:
    """The timing cache for this CPU model and torch version."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{detect_hardware().cpu}-torch-{torch.__version__}").strip("-")
    return lmopt_home() / "kernels" / f"{slug}.json"


_LOADED: dict[Path, dict[str, Any]] = {}


def load_timings(path: Path | None = None) -> dict[str, Any]:
    """{signature: timings} from the cache file (empty when missing, unreadable or for another
    CPU/torch); read once per process and path."""
    path = path or cache_file()
    if path not in _LOADED:
        entries: dict[str, Any] = {}
        try:
            data = json.loads(path.read_text())
            if data.get("cpu") == detect_hardware().cpu and data.get("torch") == torch.__version__ \
                    and data.get("method") == TIMING_METHOD and data.get("native") == source_key():
                entries = dict(data.get("timings", {}))
        except (OSError, ValueError, AttributeError):
            pass  # no cache yet, or a damaged one: measure again and rewrite it
        _LOADED[path] = entries
    return _LOADED[path]


def save_timings(key: str, timings: dict[str, Any], path: Path | None = None) -> Path:
    """Add one entry and rewrite the cache file atomically."""
    path = path or cache_file()
    entries = load_timings(path)
    entries[key] = timings
    return write_json(path, {"cpu": detect_hardware().cpu, "torch": torch.__version__, "method": TIMING_METHOD,
                             "native": source_key(),
                             "timings": entries})


def enabled() -> bool:
    return os.environ.get("LMOPT_AUTOTUNE", "1").lower() not in ("0", "false", "no", "off")


def tune(layer: Any, cache_dense: bool) -> Plan:
    """The plan for a layer prepared with backend `auto`: measured (or from the cache) on a CPU,
    the default plan where measuring is off or not worth it."""
    kernels = layer.kernel_candidates()
    if not enabled():
        return default_plan(layer.backend, source="default", why="LMOPT_AUTOTUNE=0")
    if layer.qweight.device.type != "cpu":
        return default_plan(layer.backend, why=f"not measured on {layer.qweight.device.type}")
    if layer.in_features * layer.out_features < MIN_WEIGHTS:
        return default_plan(layer.backend, why=f"under {MIN_WEIGHTS} weights: not worth measuring")
    key = signature(layer)
    timings, source = load_timings().get(key), "cached"
    if timings is None or any(k not in timings["paths"] for k in kernels):  # a kernel new to this cache
        timings, source = measure(layer, kernels), "measured"
        save_timings(key, timings)
    return replace(decide(timings, kernels, cache_dense), source=source)


def kernel_plan(model: Any) -> list[dict[str, Any]]:
    """Which path each class of linear layer runs and why, one entry per (name pattern, shape,
    plan): {"layers", "count", "shape" (out x in), "format", "backend", "paths", "tiers", "source",
    "why"}. Printed by `lmopt hw` and `lmopt bench`."""
    groups: dict[tuple, dict[str, Any]] = {}
    for name, module in model.named_modules():
        plan = getattr(module, "plan", None)
        if isinstance(plan, Plan):
            group = "per-channel" if module.group_size >= module.in_features else f"g{module.group_size}"
            fmt = f"int{module.bits} {group}{' + int8 activations' if module.act_quant else ''}"
            entry = {"format": fmt, "backend": module.backend, "paths": plan.describe(module.cache_dense),
                     "tiers": _tiers(plan.tiers), "source": plan.source, "why": plan.why}
        elif type(module) is torch.nn.Linear:
            dtype = str(module.weight.dtype).removeprefix("torch.")
            entry = {"format": f"dense {dtype}", "backend": "dense", "paths": f"rows 1+: {dtype} (torch GEMM)",
                     "tiers": [[None, dtype]], "source": "dense", "why": "not quantized"}
        else:
            continue
        pattern = re.sub(r"\.\d+\.", ".*.", name)
        shape = f"{module.out_features}x{module.in_features}"
        key = (pattern, shape, entry["paths"], entry["format"])
        if key in groups:
            groups[key]["count"] += 1
        else:
            groups[key] = {"layers": pattern, "count": 1, "shape": shape, **entry}
    return list(groups.values())


def _tiers(tiers: tuple[tuple[int, str], ...]) -> list[list[Any]]:
    """[[most rows or None for unbounded, path], ...] for JSON."""
    return [[limit if limit < MAX_ROWS else None, path] for limit, path in tiers]
