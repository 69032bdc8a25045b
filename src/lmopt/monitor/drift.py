"""Drift between two windows of served traffic: did what users send, or what the model answers, change?

    report = drift(reference, current, DriftConfig())     # windows: `lmopt.monitor.drift_windows`
    report.alerts                                         # metrics past their threshold

Metrics (each `MetricDrift`: value, threshold, alert; None when a window lacks what it needs):
- `prompt_length`: Kolmogorov-Smirnov statistic between the prompts' token counts.
- `tokens`: Jensen-Shannon divergence (base 2, 0..1) between the prompts' token distributions, over
  the reference's `vocab` most frequent tokens plus one bucket for all others. Tokens are the model
  tokenizer's ids (`tokens: model`) or lowercased words hashed to integers (`hashed`, no model
  needed). Few bins keep the estimate stable on a few thousand tokens; a new topic shows as mass
  moving into the "other" bucket.
- `script`, `language`: total variation distance between the shares of prompts per dominant Unicode
  script, and per language (py3langid) -- the share of traffic that moved to another script/language.
- `loss`: change of the served model's mean per-token NLL on the prompts (nats); unfamiliar input
  raises it. Only with a model (`drift(..., model=loaded)`).
- `output_length`: KS statistic between the responses' token counts.
- `bad_output`: rise of the share of empty or truncated (`finish_reason == "length"`) responses.
- `feedback_rate`: change of the share of requests that got feedback; `negative_feedback`: rise of
  the share of ratings below zero.
Default thresholds: see `DriftConfig` and docs/monitor.md (calibrated by benchmarks/monitor_scenario.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from lmopt.configs import Config
from lmopt.monitor.drift_features import (  # noqa: F401 (re-exported: the drift API in one place)
    Features,
    Window,
    dominant_script,
    js_divergence,
    ks_statistic,
    merge_features,
    noise_floor,
    prompt_nlls,
)
from lmopt.monitor.drift_features import features as _features


class DriftConfig(Config):
    """How drift is measured and when a metric alerts. A threshold of None reports without alerting.

    The thresholds were calibrated for a current window of 200 requests against a reference of 500 or
    more (docs/monitor.md): smaller windows are noisier, so `min_requests` guards against tiny ones.
    """

    tokens: Literal["hashed", "model"] = "hashed"
    """Token space of `prompt_length` and `tokens`: hashed lowercased words (no model needed), or the
    model tokenizer's ids (needs a model)."""
    vocab: int = Field(default=300, ge=1)
    """Bins of the token distribution: the reference's most frequent tokens (plus one for the rest)."""
    permutations: int = Field(default=20, ge=0)
    """Shuffles of the prompts between the two windows that estimate each distance's sampling-noise
    floor (what the distance is between two windows of these sizes from one distribution). The
    distances (`prompt_length`, `token_js`, `script`, `language`, `output_length`) are reported as
    their excess over that floor, so a threshold means the same for any window size; 0 = raw."""
    seed: int = 0
    """Seed of the shuffles (results are reproducible)."""
    min_requests: int = Field(default=50, ge=1)
    """Fewer prompts than this in either window: no metric is computed (a tiny window only adds noise)."""
    min_feedback: int = Field(default=20, ge=1)
    """Fewer ratings than this in either window: `negative_feedback` is not computed."""
    prompt_length: float | None = Field(default=0.15, gt=0)
    """Largest KS statistic between prompt-length distributions."""
    token_js: float | None = Field(default=0.05, gt=0)
    """Largest Jensen-Shannon divergence (base 2) between token distributions."""
    script: float | None = Field(default=0.10, gt=0)
    """Largest share of prompts moved to another dominant script (total variation distance)."""
    language: float | None = Field(default=0.15, gt=0)
    """Largest share of prompts moved to another language (total variation distance)."""
    loss: float | None = Field(default=0.5, gt=0)
    """Largest change of the model's mean per-token NLL on the prompts, either way (nats). A change
    alerts only when it is also clear of chance (Welch |t| of at least `loss_min_t`): per-prompt NLLs
    spread widely (sd ~1.1 nats on PubMed questions), so small windows differ by 0.5 by chance."""
    loss_min_t: float = Field(default=3.0, ge=0)
    """Least Welch t statistic of the loss change for an alert."""
    output_length: float | None = Field(default=0.15, gt=0)
    """Largest KS statistic between response-length distributions."""
    bad_output: float | None = Field(default=0.10, gt=0)
    """Largest rise of the share of empty or truncated responses."""
    feedback_rate: float | None = Field(default=0.20, gt=0)
    """Largest change of the share of requests that got feedback. Ratings arrive after the response,
    so the newest requests of a window are rated less often yet: keep this loose."""
    negative_feedback: float | None = Field(default=0.15, gt=0)
    """Largest rise of the share of ratings below zero."""
    loss_prompts: int = Field(default=200, ge=1)
    """Prompts per window the model's loss is measured on (the most recent ones)."""
    loss_max_tokens: int = Field(default=256, ge=8)
    """Prompt tokens scored (longer prompts keep their end)."""


@dataclass
class MetricDrift:
    name: str
    value: float | None
    """The statistic (None: not computed, see `note`)."""
    threshold: float | None
    alert: bool
    reference: Any = None
    """A summary of the reference window for this metric (mean, shares...)."""
    current: Any = None
    note: str = ""


@dataclass
class DriftReport:
    reference: str
    current: str
    n_reference: int
    n_current: int
    metrics: list[MetricDrift] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def alerts(self) -> list[MetricDrift]:
        return [m for m in self.metrics if m.alert]

    def values(self) -> dict[str, float]:
        return {m.name: m.value for m in self.metrics if m.value is not None}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alerts": [m.name for m in self.alerts]}


# --- features -> metrics ---------------------------------------------------------------------------


def features(window: Window, config: DriftConfig, model: Any = None) -> Features:
    """The window's per-prompt figures as `config` asks for them (see `drift_features.features`)."""
    return _features(window, config.tokens, model, config.loss_prompts, config.loss_max_tokens)


def _metric(name: str, value: float | None, threshold: float | None, ref: Any = None, cur: Any = None,
            note: str = "", two_sided: bool = False) -> MetricDrift:
    size = abs(value) if value is not None and two_sided else value
    alert = size is not None and threshold is not None and size > threshold
    rounded = None if value is None else round(float(value), 6)
    return MetricDrift(name, rounded, threshold, alert, ref, cur, note)


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4) if values else 0.0


def _shares(labels: np.ndarray, names: list[str], top: int = 5) -> dict[str, float]:
    counts = Counter(labels.tolist())
    return {names[k]: round(n / len(labels), 4) for k, n in counts.most_common(top)}


def _distance(name: str, statistic: Callable[[Any, Any], float], ref: np.ndarray, cur: np.ndarray,
              threshold: float | None, config: DriftConfig, ref_summary: dict, cur_summary: dict) -> MetricDrift:
    """A distance between the windows, reported as its excess over the noise floor."""
    raw = statistic(ref, cur)
    floor = noise_floor(statistic, ref, cur, config.permutations, config.seed)
    return _metric(name, raw - floor, threshold, ref_summary, {**cur_summary, "distance": round(raw, 6),
                                                               "noise_floor": round(floor, 6)})


def _labels(ref: list[str], cur: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = sorted(set(ref) | set(cur))
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[x] for x in ref]), np.array([index[x] for x in cur]), names


def _label_distance(name: str, ref: list[str], cur: list[str], threshold: float | None,
                    config: DriftConfig) -> MetricDrift:
    a, b, names = _labels(ref, cur)

    def tv(x: np.ndarray, y: np.ndarray) -> float:
        return 0.5 * float(np.abs(np.bincount(x, minlength=len(names)) / len(x)
                                  - np.bincount(y, minlength=len(names)) / len(y)).sum())

    return _distance(name, tv, a, b, threshold, config, _shares(a, names), _shares(b, names))


def drift(reference: Window | Features, current: Window | Features, config: DriftConfig | None = None, *,
          model: Any = None) -> DriftReport:
    """Compare two windows on every metric (see the module docstring); `model` enables `loss` and
    `tokens: model`. Windows may be given as precomputed `Features`."""
    config = config or DriftConfig()
    ref = reference if isinstance(reference, Features) else features(reference, config, model)
    cur = current if isinstance(current, Features) else features(current, config, model)
    report = DriftReport(ref.source, cur.source, ref.n, cur.n, config=config.to_dict())
    if min(ref.n, cur.n) < config.min_requests:
        note = f"fewer than {config.min_requests} prompts in a window (min_requests)"
        report.metrics = [_metric(name, None, getattr(config, name), note=note) for name in METRICS]
        return report
    report.metrics = [
        _lengths("prompt_length", [len(t) for t in ref.tokens], [len(t) for t in cur.tokens], config.prompt_length,
                 config),
        _tokens(ref, cur, config),
        _label_distance("script", ref.scripts, cur.scripts, config.script, config),
        _label_distance("language", ref.languages, cur.languages, config.language, config),
        _loss(ref, cur, config),
        _lengths("output_length", ref.output_lengths, cur.output_lengths, config.output_length, config),
        _bad_output(ref, cur, config),
        _feedback_rate(ref, cur, config),
        _negative_feedback(ref, cur, config),
    ]
    return report


METRICS = ("prompt_length", "token_js", "script", "language", "loss", "output_length", "bad_output",
           "feedback_rate", "negative_feedback")


def _lengths(name: str, ref: list[int] | None, cur: list[int] | None, threshold: float | None,
             config: DriftConfig) -> MetricDrift:
    if not ref or not cur:
        return _metric(name, None, threshold, note="a window has no responses")
    return _distance(name, ks_statistic, np.array(ref), np.array(cur), threshold, config, {"mean": _mean(ref)},
                     {"mean": _mean(cur)})


def _tokens(ref: Features, cur: Features, config: DriftConfig) -> MetricDrift:
    """JS divergence of the windows' token histograms; rows are per-prompt histograms (n, vocab + 1)."""
    bins = {t: i for i, (t, _) in enumerate(Counter(t for ids in ref.tokens for t in ids).most_common(config.vocab))}

    def rows(seqs: list[list[int]]) -> np.ndarray:
        out = np.zeros((len(seqs), len(bins) + 1))
        for i, ids in enumerate(seqs):
            np.add.at(out[i], [bins.get(t, len(bins)) for t in ids], 1)
        return out

    a, b = rows(ref.tokens), rows(cur.tokens)
    if not a.sum() or not b.sum():
        return _metric("token_js", None, config.token_js, note="a window has no tokens")

    def js(x: np.ndarray, y: np.ndarray) -> float:
        return js_divergence(x.sum(0), y.sum(0))

    def other(x: np.ndarray) -> dict[str, float]:
        return {"other_share": round(float(x[:, -1].sum() / x.sum()), 4)}

    return _distance("token_js", js, a, b, config.token_js, config, other(a), other(b))


def _loss(ref: Features, cur: Features, config: DriftConfig) -> MetricDrift:
    if ref.nll is None or cur.nll is None:
        return _metric("loss", None, config.loss, note="no model given")
    a, b = _mean(ref.nll), _mean(cur.nll)
    se = float(np.sqrt(np.var(ref.nll, ddof=1) / len(ref.nll) + np.var(cur.nll, ddof=1) / len(cur.nll))) \
        if min(len(ref.nll), len(cur.nll)) > 1 else float("inf")
    t = abs(b - a) / se if se > 0 else float("inf")
    metric = _metric("loss", b - a, config.loss, {"nll": a}, {"nll": b, "welch_t": round(t, 2)}, two_sided=True)
    if metric.alert and t < config.loss_min_t:
        metric.alert, metric.note = False, f"within chance (Welch t {t:.2f} < loss_min_t {config.loss_min_t})"
    return metric


def _bad_output(ref: Features, cur: Features, config: DriftConfig) -> MetricDrift:
    if cur.bad_outputs is None:
        return _metric("bad_output", None, config.bad_output, note="the current window has no responses")
    b = cur.bad_outputs / cur.n
    a = ref.bad_outputs / ref.n if ref.bad_outputs is not None else 0.0
    note = "" if ref.bad_outputs is not None else "the reference has no responses: compared with 0"
    return _metric("bad_output", b - a, config.bad_output, {"share": round(a, 4)}, {"share": round(b, 4)}, note)


def _feedback_rate(ref: Features, cur: Features, config: DriftConfig) -> MetricDrift:
    if ref.feedback_rate is None or cur.feedback_rate is None:
        return _metric("feedback_rate", None, config.feedback_rate, note="a window has no feedback record")
    return _metric("feedback_rate", cur.feedback_rate - ref.feedback_rate, config.feedback_rate,
                   {"rate": round(ref.feedback_rate, 4)}, {"rate": round(cur.feedback_rate, 4)}, two_sided=True)


def _negative_feedback(ref: Features, cur: Features, config: DriftConfig) -> MetricDrift:
    counts = [len(f.ratings) if f.ratings is not None else 0 for f in (ref, cur)]
    if min(counts) < config.min_feedback:
        return _metric("negative_feedback", None, config.negative_feedback,
                       note=f"fewer than {config.min_feedback} ratings in a window (min_feedback)")
    a, b = (sum(r < 0 for r in f.ratings) / len(f.ratings) for f in (ref, cur))
    return _metric("negative_feedback", b - a, config.negative_feedback, {"share": round(a, 4)},
                   {"share": round(b, 4)})
