"""The regression gate: measure a candidate and a baseline in one run, gate every difference.

`check(candidate, baseline, suite)` loads both models (same dtype, same machine, same process),
measures each suite metric on the same units for both (multiple-choice items, perplexity windows,
alternating speed and memory repeats), puts a paired bootstrap interval on every difference and
fails a metric only when its whole interval lies beyond the suite's tolerance. The report and every
metric are stored in the registry (kinds `gate` and `gate-metric`) so trends can be drawn.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmopt.data.tasks import GREEDY_TASKS, load_task
from lmopt.data.text import load_text
from lmopt.errors import LmoptError
from lmopt.evaluate.paired import decode_tokens_per_s, item_scores, peak_memory_mb, window_nlls
from lmopt.evaluate.perplexity import tokenize_windows
from lmopt.models import LoadedModel, load_model
from lmopt.models.load import resolve
from lmopt.monitor.bootstrap import mean_difference, paired_bootstrap, ratio_of_means
from lmopt.monitor.gate_report import GateReport, MetricResult, verdict
from lmopt.monitor.models import resolve_alias
from lmopt.monitor.registry import Registry, machine_summary
from lmopt.monitor.suite import MemoryGate, PerplexityGate, SpeedGate, Suite, TaskGate, load_suite

Log = Callable[[str], Any]


def _where(ref: str | Path, registry: Any) -> Path | str:
    """The directory (or hub id) a reference names, `@alias` resolved through `registry`."""
    url = registry.url if isinstance(registry, Registry) else None
    where = resolve(resolve_alias(str(ref), url))
    return where.resolve() if isinstance(where, Path) else where


def _open(ref: str | Path, where: Path | str, dtype: str) -> tuple[LoadedModel, dict[str, Any]]:
    loaded = load_model(where, dtype=dtype)
    return loaded, {"ref": str(ref), "hash": loaded.hash, "path": str(loaded.path) if loaded.path else None}


def _interval(suite: Suite, base: list[float], cand: list[float], statistic: Any) -> Any:
    return paired_bootstrap(base, cand, statistic, confidence=suite.confidence, resamples=suite.resamples,
                            seed=suite.seed)


def _short(task: str) -> str:
    """A metric name for a task: `mc:/long/path/x.jsonl` -> `mc:x.jsonl`."""
    return f"mc:{Path(task[3:]).name}" if task.startswith("mc:") else task


def measure_accuracy(gate: TaskGate, base: LoadedModel, cand: LoadedModel, suite: Suite,
                     data_dir: Path | None) -> MetricResult:
    """Accuracy of both models on the same items; interval of the difference over items."""
    items = load_task(gate.task, data_dir, gate.limit)
    greedy = gate.task in GREEDY_TASKS
    scores = [item_scores(m.model, m.tokenizer, items, greedy=greedy, batch_size=suite.batch_size)[gate.metric]
              for m in (base, cand)]
    iv = _interval(suite, scores[0], scores[1], mean_difference)
    a, b = np.asarray(scores[0]), np.asarray(scores[1])
    return MetricResult(
        name=f"{_short(gate.task)}/{gate.metric}", kind="accuracy", baseline=float(a.mean()), candidate=float(b.mean()),
        compared="difference", estimate=iv.estimate, low=iv.low, high=iv.high, tolerance=-gate.max_drop,
        worse="below", verdict=verdict(iv.low, iv.high, -gate.max_drop, "below"), n=len(items), unit="items",
        detail={"only_baseline_right": int(((a == 1) & (b == 0)).sum()),
                "only_candidate_right": int(((a == 0) & (b == 1)).sum())})


def measure_perplexity(gate: PerplexityGate, base: LoadedModel, cand: LoadedModel, suite: Suite,
                       data_dir: Path | None) -> MetricResult:
    """Per-window NLL of both models on the same windows; interval of the relative perplexity change."""
    text = load_text(gate.source, data_dir)
    if base.tokenizer is not cand.tokenizer:
        same = [tokenize_windows(m.tokenizer, text, gate.seq_len, gate.windows) for m in (base, cand)]
        if same[0].shape != same[1].shape or not bool((same[0] == same[1]).all()):
            raise LmoptError(f"perplexity on '{gate.source}': the two models tokenize it differently, so "
                             "their windows cannot be paired (gate such models on tasks instead)")
    nlls = [window_nlls(m.model, m.tokenizer, text, seq_len=gate.seq_len, limit=gate.windows) for m in (base, cand)]
    iv = _interval(suite, nlls[0], nlls[1], mean_difference)
    # exp is monotone: the interval of the NLL difference maps to one of the perplexity ratio.
    rel = [float(np.expm1(v)) for v in (iv.estimate, iv.low, iv.high)]
    return MetricResult(
        name=f"perplexity/{Path(gate.source).name}", kind="perplexity",
        baseline=float(np.exp(np.mean(nlls[0]))), candidate=float(np.exp(np.mean(nlls[1]))),
        compared="relative change", estimate=rel[0], low=rel[1], high=rel[2], tolerance=gate.max_increase,
        worse="above", verdict=verdict(rel[1], rel[2], gate.max_increase, "above"), n=len(nlls[0]),
        unit="windows", samples={"baseline": nlls[0], "candidate": nlls[1]},
        detail={"seq_len": gate.seq_len, "sample": "mean NLL per window (nats)"})


def _alternate(measure: Callable[[LoadedModel], float], base: LoadedModel, cand: LoadedModel,
               repeats: int) -> tuple[list[float], list[float]]:
    """`repeats` measurements of each model, alternating and swapping who goes first, so a slow
    stretch of the machine hits both (repeat i of the two models is a pair)."""
    a, b = [], []
    for i in range(repeats):
        if i % 2 == 0:
            a.append(measure(base))
            b.append(measure(cand))
        else:
            b.append(measure(cand))
            a.append(measure(base))
    return a, b


def measure_speed(gate: SpeedGate, base: LoadedModel, cand: LoadedModel, suite: Suite) -> MetricResult:
    """Decode tokens/s, alternating repeats; interval of the candidate/baseline ratio over repeats."""

    def speed(m: LoadedModel) -> float:
        return decode_tokens_per_s(m.model, m.tokenizer, prompt_len=gate.prompt_len, new_tokens=gate.new_tokens)

    for m in (base, cand):  # warm-up: first-call allocations and kernel choices are not the model's speed
        decode_tokens_per_s(m.model, m.tokenizer, prompt_len=gate.prompt_len, new_tokens=2)
    a, b = _alternate(speed, base, cand, gate.repeats)
    iv = _interval(suite, a, b, ratio_of_means)
    return MetricResult(
        name="speed/decode_tokens_per_s", kind="speed", baseline=statistics.mean(a), candidate=statistics.mean(b),
        compared="ratio", estimate=iv.estimate, low=iv.low, high=iv.high, tolerance=gate.min_ratio,
        worse="below", verdict=verdict(iv.low, iv.high, gate.min_ratio, "below"), n=gate.repeats,
        unit="repeats", samples={"baseline": a, "candidate": b},
        detail={"prompt_len": gate.prompt_len, "new_tokens": gate.new_tokens, "batch": 1})


def measure_memory(gate: MemoryGate, base: LoadedModel, cand: LoadedModel, suite: Suite) -> list[MetricResult]:
    """Peak memory (weights + one forward pass), alternating repeats; a ratio gate and/or an MB limit."""

    def memory(m: LoadedModel) -> float:
        return peak_memory_mb(m.model, m.tokenizer, prompt_len=gate.prompt_len)

    for m in (base, cand):  # warm-up: one-time allocations (caches, thread pools) are not the model's
        memory(m)
    a, b = _alternate(memory, base, cand, gate.repeats)
    common = {"kind": "memory", "baseline": statistics.mean(a), "candidate": statistics.mean(b), "n": gate.repeats,
              "unit": "repeats", "samples": {"baseline": a, "candidate": b},
              "detail": {"prompt_len": gate.prompt_len, "sample": "weights + forward-pass peak (MB)"}}
    results = []
    if gate.max_ratio is not None:
        iv = _interval(suite, a, b, ratio_of_means)
        results.append(MetricResult(name="memory/peak_ratio", compared="ratio", estimate=iv.estimate, low=iv.low,
                                    high=iv.high, tolerance=gate.max_ratio, worse="above",
                                    verdict=verdict(iv.low, iv.high, gate.max_ratio, "above"), **common))
    if gate.max_mb is not None:
        iv = _interval(suite, b, b, lambda _, c: c.mean(axis=-1))  # the candidate's own mean
        results.append(MetricResult(name="memory/peak_mb", compared="value", estimate=iv.estimate, low=iv.low,
                                    high=iv.high, tolerance=gate.max_mb, worse="above",
                                    verdict=verdict(iv.low, iv.high, gate.max_mb, "above"), **common))
    return results


def check(candidate: str | Path, baseline: str | Path, suite: Suite | str | Path | None = None, *,
          registry: Any = None, data_dir: str | Path | None = None, log: Log | None = None) -> GateReport:
    """Measure both models on the suite and gate every metric (see the module docstring).

    `registry`: a `Registry` (or a URL) to store the report in; None stores nothing. `@alias`
    references resolve through that registry (the default one when None).
    """
    log = log or (lambda message: None)
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    registry = Registry(registry) if isinstance(registry, str) else registry
    data = Path(data_dir) if data_dir else None
    started = time.time()
    base_where, cand_where = _where(baseline, registry), _where(candidate, registry)
    base, base_info = _open(baseline, base_where, suite.dtype)
    if cand_where == base_where:  # a model against itself: load it once
        cand, cand_info = base, {**base_info, "ref": str(candidate)}
    else:
        cand, cand_info = _open(candidate, cand_where, suite.dtype)
    metrics: list[MetricResult] = []
    for gate in suite.tasks:
        log(f"accuracy {gate.task} ({gate.limit or 'all'} items)")
        metrics.append(measure_accuracy(gate, base, cand, suite, data))
    for gate in suite.perplexity:
        log(f"perplexity {gate.source} ({gate.windows} windows of {gate.seq_len})")
        metrics.append(measure_perplexity(gate, base, cand, suite, data))
    if suite.speed is not None:
        log(f"decode speed ({suite.speed.repeats} repeats each)")
        metrics.append(measure_speed(suite.speed, base, cand, suite))
    if suite.memory is not None:
        log(f"peak memory ({suite.memory.repeats} repeats each)")
        metrics.extend(measure_memory(suite.memory, base, cand, suite))
    report = GateReport(
        suite=suite.name, passed=all(m.passed for m in metrics), candidate=cand_info, baseline=base_info,
        metrics=metrics, confidence=suite.confidence, resamples=suite.resamples,
        dtype=str(base.model.dtype).removeprefix("torch."), machine=machine_summary(), started=started,
        seconds=round(time.time() - started, 2))
    if isinstance(registry, Registry):
        report.registry_id = record_report(registry, report, suite)
    return report


def record_report(registry: Registry, report: GateReport, suite: Suite) -> int:
    """Store the report (kind `gate`) and one row per metric (kind `gate-metric`); returns the gate id."""
    cand, base = report.candidate, report.baseline
    config = {"suite": suite.to_dict(), "baseline": base["ref"], "baseline_hash": base["hash"]}
    summary = {"passed": report.passed, "failed": report.failed, "seconds": report.seconds,
               "report": report.model_dump(mode="json", exclude={"registry_id"})}
    gate_id = registry.record("gate", cand["ref"], summary, task=suite.name, model_hash=cand["hash"],
                              config=config, machine=report.machine)
    for m in report.metrics:
        figures = m.model_dump(mode="json", exclude={"samples"})
        registry.record("gate-metric", cand["ref"], figures, task=m.name, model_hash=cand["hash"],
                        config={"suite": suite.name, "gate_id": gate_id, "baseline": base["ref"],
                                "baseline_hash": base["hash"]}, machine=report.machine)
    for info, role in ((cand, "candidate"), (base, "baseline")):  # figures of registered models
        if info["hash"] and registry.model_rows(info["hash"]):
            figures = {f"{report.suite}/{m.name}": getattr(m, role) for m in report.metrics}
            registry.upsert_model({"hash": info["hash"], "figures": figures})
    return gate_id
