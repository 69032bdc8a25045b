"""What a regression gate found, and its JSON, Markdown and HTML forms (HTML with plots).

A `GateReport` holds one `MetricResult` per gated metric: both models' figures, the compared
quantity (difference, relative change or ratio) with its confidence interval, the tolerance and the
verdict. `pass`: the whole interval is on the good side of the tolerance; `inconclusive`: the
interval straddles it (the gate still passes: noise must not flap it); `fail`: the whole interval
lies beyond the tolerance.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from lmopt.io import atomic_write_text

Verdict = Literal["pass", "inconclusive", "fail"]
SAMPLE_LABELS = {"perplexity": "mean NLL (nats)", "speed": "decode tokens/s", "memory": "peak MB",
                 "accuracy": "correct"}


class MetricResult(BaseModel):
    name: str
    """`task/acc`, `perplexity/source`, `speed/decode_tokens_per_s`, `memory/peak_ratio`, `memory/peak_mb`."""
    kind: Literal["accuracy", "perplexity", "speed", "memory"]
    baseline: float
    """The baseline's figure (accuracy, perplexity, tokens/s, MB)."""
    candidate: float
    compared: Literal["difference", "relative change", "ratio", "value"]
    """What estimate/low/high are: candidate - baseline, candidate/baseline - 1, candidate/baseline,
    or the candidate's own figure (absolute limits)."""
    estimate: float
    low: float
    high: float
    tolerance: float
    worse: Literal["below", "above"]
    """Which side of the tolerance is a regression."""
    verdict: Verdict
    n: int
    """Units resampled: items, windows or repeats."""
    unit: str
    samples: dict[str, list[float]] = Field(default_factory=dict)
    """Per-unit figures of both models (windows' NLL, repeats' speed or memory; not per-item accuracy)."""
    detail: dict[str, Any] = Field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict != "fail"


def verdict(low: float, high: float, tolerance: float, worse: str) -> Verdict:
    """Fail only when the whole interval lies beyond the tolerance."""
    beyond_all = high < tolerance if worse == "below" else low > tolerance
    beyond_some = low < tolerance if worse == "below" else high > tolerance
    return "fail" if beyond_all else "inconclusive" if beyond_some else "pass"


class GateReport(BaseModel):
    suite: str
    passed: bool
    candidate: dict[str, Any]
    """ref, hash, path of the candidate."""
    baseline: dict[str, Any]
    metrics: list[MetricResult]
    confidence: float
    resamples: int
    dtype: str
    machine: dict[str, Any] = Field(default_factory=dict)
    started: float
    seconds: float
    registry_id: int | None = None
    """Id of the `gate` run recorded in the registry."""

    @property
    def failed(self) -> list[str]:
        return [m.name for m in self.metrics if m.verdict == "fail"]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2)

    def to_markdown(self) -> str:
        return render_markdown(self)

    def to_html(self) -> str:
        return render_html(self)


def _num(value: float) -> str:
    return f"{value:.4g}"


def _fmt(m: MetricResult, value: float) -> str:
    if m.kind == "accuracy":
        return f"{value * 100:+.2f} pts"
    if m.compared == "relative change":
        return f"{value * 100:+.2f}%"
    if m.compared == "ratio":
        return f"{value:.3f}x"
    return f"{value:.1f}"


def compared_text(m: MetricResult) -> tuple[str, str]:
    """("estimate [low, high]", "allowed bound") as text."""
    bound = "≥" if m.worse == "below" else "≤"
    return f"{_fmt(m, m.estimate)} [{_fmt(m, m.low)}, {_fmt(m, m.high)}]", f"{bound} {_fmt(m, m.tolerance)}"


def render_markdown(report: GateReport) -> str:
    status = "PASS" if report.passed else f"FAIL ({', '.join(report.failed)})"
    lines = [
        f"## Regression gate `{report.suite}`: {status}",
        "",
        f"candidate `{report.candidate['ref']}` ({report.candidate.get('hash')}) vs baseline "
        f"`{report.baseline['ref']}` ({report.baseline.get('hash')}); {report.dtype}, "
        f"{int(report.confidence * 100)}% paired bootstrap intervals ({report.resamples} resamples), "
        f"{report.seconds:.0f} s",
        "",
        "| metric | baseline | candidate | change [interval] | allowed | n | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in report.metrics:
        change, allowed = compared_text(m)
        lines.append(f"| {m.name} | {_num(m.baseline)} | {_num(m.candidate)} | {change} | {allowed} | "
                     f"{m.n} {m.unit} | {m.verdict} |")
    return "\n".join(lines) + "\n"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def interval_plot(report: GateReport) -> str:
    """One row per metric: the estimate, its interval, the tolerance (red) and no-change (grey); PNG base64."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(report.metrics)
    fig, axes = plt.subplots(rows, 1, figsize=(7, 0.9 * rows + 0.6), squeeze=False)
    colors = {"pass": "tab:green", "inconclusive": "tab:orange", "fail": "tab:red"}
    for ax, m in zip(axes[:, 0], report.metrics, strict=True):
        neutral = {"difference": 0.0, "relative change": 0.0, "ratio": 1.0, "value": m.baseline}[m.compared]
        ax.errorbar([m.estimate], [0], xerr=[[m.estimate - m.low], [m.high - m.estimate]], fmt="o",
                    color=colors[m.verdict], capsize=4)
        ax.axvline(m.tolerance, color="tab:red", linestyle="--", linewidth=1)
        ax.axvline(neutral, color="grey", linewidth=0.8)
        ax.set_yticks([0], [m.name])
        lo, hi = min(m.low, m.tolerance, neutral), max(m.high, m.tolerance, neutral)
        pad = (hi - lo) * 0.15 or 0.01
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel(m.compared, fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def samples_plot(report: GateReport) -> str | None:
    """Per-unit figures of both models for metrics that keep them (windows, repeats); PNG base64."""
    kept, seen = [], set()
    for m in report.metrics:  # the memory ratio and limit share their samples: plot them once
        if m.samples and (m.kind, m.unit) not in seen:
            kept.append(m)
            seen.add((m.kind, m.unit))
    if not kept:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kept), figsize=(3.2 * len(kept), 2.8), squeeze=False)
    for ax, m in zip(axes[0], kept, strict=True):
        base, cand = m.samples["baseline"], m.samples["candidate"]
        ax.plot(range(len(base)), base, "o-", label="baseline", markersize=3)
        ax.plot(range(len(cand)), cand, "s-", label="candidate", markersize=3)
        ax.set_title(m.name, fontsize=9)
        ax.set_xlabel(m.unit.rstrip("s"), fontsize=8)
        ax.set_ylabel(SAMPLE_LABELS[m.kind], fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def render_html(report: GateReport) -> str:
    esc = html.escape
    status = "PASS" if report.passed else "FAIL"
    rows = []
    for m in report.metrics:
        change, allowed = compared_text(m)
        rows.append(f"<tr class='{m.verdict}'><td>{esc(m.name)}</td><td>{_num(m.baseline)}</td>"
                    f"<td>{_num(m.candidate)}</td><td>{esc(change)}</td><td>{esc(allowed)}</td>"
                    f"<td>{m.n} {esc(m.unit)}</td><td>{m.verdict}</td></tr>")
    plots = [f"<img alt='intervals' src='data:image/png;base64,{interval_plot(report)}'>"]
    if (samples := samples_plot(report)) is not None:
        plots.append(f"<img alt='per-unit figures' src='data:image/png;base64,{samples}'>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lmopt gate {esc(report.suite)}: {status}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}} .fail{{background:#fdd}} .inconclusive{{background:#ffe}}
.pass{{background:#efe}}</style></head><body>
<h1>Regression gate <code>{esc(report.suite)}</code>: {status}</h1>
<p>candidate <code>{esc(str(report.candidate['ref']))}</code> ({esc(str(report.candidate.get('hash')))}) vs
baseline <code>{esc(str(report.baseline['ref']))}</code> ({esc(str(report.baseline.get('hash')))});
{esc(report.dtype)}; {int(report.confidence * 100)}% paired bootstrap intervals ({report.resamples}
resamples); {report.seconds:.0f} s on {esc(str(report.machine.get('cpu', '')))}.</p>
<table><tr><th>metric</th><th>baseline</th><th>candidate</th><th>change [interval]</th><th>allowed</th>
<th>n</th><th>verdict</th></tr>
{''.join(rows)}
</table>
<p>A metric fails only when its whole interval lies beyond the allowed change (red dashed line).</p>
{''.join(plots)}
</body></html>
"""


def write_reports(report: GateReport, *, json_path: Path | None = None, markdown_path: Path | None = None,
                  html_path: Path | None = None) -> list[Path]:
    """Write the requested forms atomically; returns the paths written."""
    written = []
    for path, render in ((json_path, report.to_json), (markdown_path, report.to_markdown),
                         (html_path, report.to_html)):
        if path is not None:
            written.append(atomic_write_text(path, render()))
    return written
