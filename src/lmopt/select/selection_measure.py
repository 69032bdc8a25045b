"""Measure one candidate on the task: load, adapt, quality, batch-1 latency, throughput, memory, size.

- `adapt_s`: wall seconds of adaptation (probe fit with its feature pass, LoRA or fine-tuning steps);
- quality: accuracy (classify) or mean NLL per reference token (generate, text2text) on the eval items,
  scored in batches of `batch_size`, whose wall time gives `throughput_items_s`;
- `latency_p50_ms` / `latency_p99_ms`: one request at a time (`respond`) over the first
  `latency_items` eval items, after one warm-up request;
- `peak_mb`: the process's peak resident memory while serving (evaluation and latency), the high-water
  mark reset after adaptation (Linux `/proc/self/clear_refs`; elsewhere the lifetime peak, an upper
  bound); `adapt_peak_mb` the same during adaptation;
- `size_mb`: the weights in memory in MB (each storage of the parameters and buffers once, a probe head
  included; `models.size.weights_bytes`).
"""

from __future__ import annotations

import time
from typing import Any

from lmopt.hardware import peak_rss_mb, release_free_heap, reset_peak_rss
from lmopt.models import count_parameters
from lmopt.models.size import weights_bytes
from lmopt.select.selection_candidates import Candidate, check_tokenizer
from lmopt.select.selection_data import TaskData
from lmopt.select.selection_ways import make_way


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile by linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def weights_mb(model: Any, extra_bytes: int = 0) -> tuple[float, float]:
    """(size in MB, parameters in millions) of a model's parameters and buffers (each storage once)."""
    return (weights_bytes(model) + extra_bytes) / 1e6, count_parameters(model) / 1e6


def _quality(way: Any, data: TaskData) -> dict[str, Any]:
    if data.task_type == "classify":
        predicted = way.predict([e.source for e in data.eval])
        right = sum(p == e.target for p, e in zip(predicted, data.eval, strict=True))
        return {"accuracy": right / len(data.eval)}
    nll, tokens = way.nll(data.eval)
    return {"ref_nll": nll / max(tokens, 1), "ref_tokens": tokens}


def measure_candidate(candidate: Candidate, data: TaskData, cfg: Any) -> dict[str, Any]:
    """The row of the selection table for one candidate (see the module docstring)."""
    release_free_heap()
    start = time.perf_counter()
    loaded = candidate.load(cfg.dtype)
    load_s = time.perf_counter() - start
    check_tokenizer(candidate.name, loaded.tokenizer, loaded.family, data.task_type)
    way = make_way(candidate, loaded, data, cfg)
    reset_peak_rss()
    start = time.perf_counter()
    adapt_info = way.adapt()  # {} when the way has nothing to train (zero-shot)
    adapt_s = time.perf_counter() - start if adapt_info else 0.0
    adapt_peak = peak_rss_mb() if adapt_info else None
    release_free_heap()
    reset_peak_rss()
    start = time.perf_counter()
    quality = _quality(way, data)
    eval_s = time.perf_counter() - start
    requests = [e.source for e in data.eval[:cfg.latency_items]]
    way.respond(requests[0])  # warm-up
    latencies = []
    for source in requests:
        start = time.perf_counter()
        way.respond(source)
        latencies.append((time.perf_counter() - start) * 1e3)
    size_mb, params_m = weights_mb(way.model, way.extra_bytes())
    row = {
        "candidate": candidate.name, "family": candidate.family, "way": candidate.way, **quality,
        "latency_p50_ms": round(percentile(latencies, 50), 2), "latency_p99_ms": round(percentile(latencies, 99), 2),
        "throughput_items_s": round(len(data.eval) / eval_s, 3), "peak_mb": round(peak_rss_mb(), 1),
        "size_mb": round(size_mb, 2), "adapt_s": round(adapt_s, 2), "params_m": round(params_m, 2),
        "load_s": round(load_s, 2), "adapt_peak_mb": None if adapt_peak is None else round(adapt_peak, 1),
        "eval_items": len(data.eval), "latency_items": len(latencies), **adapt_info,
    }
    del way, loaded
    release_free_heap()
    return row
