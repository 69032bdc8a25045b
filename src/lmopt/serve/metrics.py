"""Engine metrics in the Prometheus text format (served at /metrics), no client library needed.

Gauges: queue depth, running batch size, KV slots in use, generated tokens/s over the last 10 s.
Counters: requests by finish reason, prompt and generated tokens. Histograms: time to first token,
end-to-end latency, time per output token. Updated from the engine thread after every iteration
(also one that only retired aborted requests), read from the server.

`TelemetryMetrics`: traffic records queued and dropped, feedback by rating sign, and the drift
figures a checker publishes with `set_drift(metric, value)`.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: bucket le=x counts observations <= x)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for edge, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if edge == float("inf") else repr(edge)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        return out + [f"{name}_sum {self.total}", f"{name}_count {self.n}"]


class EngineMetrics:
    """What /metrics reports; `render()` gives the exposition text."""

    def __init__(self, window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self.window_s = window_s
        self.queue_depth = 0
        self.running = 0
        self.slots_used = 0
        self.num_slots = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.finished: dict[str, int] = {}
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent iterations

    def on_step(self, generated: int, prompt: int, queue_depth: int, running: int, slots_used: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.generated_tokens += generated
            self.prompt_tokens += prompt
            self.queue_depth, self.running, self.slots_used = queue_depth, running, slots_used
            self._recent.append((now, generated))
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()

    def on_first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def on_finish(self, reason: str, latency_s: float, output_tokens: int, ttft_s: float | None) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1
            self.latency.observe(latency_s)
            if output_tokens > 1 and ttft_s is not None:
                self.tpot.observe((latency_s - ttft_s) / (output_tokens - 1))

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in self._recent if t >= now - self.window_s]
        return sum(n for _, n in recent) / self.window_s if recent else 0.0

    def render(self) -> str:
        with self._lock:
            gauges = [("lmopt_queue_depth", "Requests waiting for a KV slot", self.queue_depth),
                      ("lmopt_running_requests", "Requests in the running batch", self.running),
                      ("lmopt_kv_slots_used", "KV cache slots in use", self.slots_used),
                      ("lmopt_kv_slots_total", "KV cache slots", self.num_slots),
                      ("lmopt_generation_tokens_per_second", f"Generated tokens/s over {self.window_s:g} s",
                       round(self.tokens_per_s(), 3))]
            counters = [("lmopt_prompt_tokens_total", "Prompt tokens processed", self.prompt_tokens),
                        ("lmopt_generation_tokens_total", "Tokens generated", self.generated_tokens)]
            hists = [("lmopt_time_to_first_token_seconds", "Time to first token", self.ttft),
                     ("lmopt_request_latency_seconds", "End-to-end request latency", self.latency),
                     ("lmopt_time_per_output_token_seconds", "Decode time per token", self.tpot)]
            lines = []
            for kind, rows in (("gauge", gauges), ("counter", counters)):
                for name, doc, value in rows:
                    lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name} {value}"]
            lines += ["# HELP lmopt_requests_total Finished requests by reason",
                      "# TYPE lmopt_requests_total counter"]
            lines += [f'lmopt_requests_total{{reason="{r}"}} {n}' for r, n in sorted(self.finished.items())]
            for name, doc, hist in hists:
                lines += [f"# HELP {name} {doc}", f"# TYPE {name} histogram", *hist.lines(name)]
            return "\n".join(lines) + "\n"


class TelemetryMetrics:
    """Traffic recording, feedback and drift figures, rendered after the engine's on /metrics.

    Drift gauges exist only once a checker has set them (`set_drift`): no placeholder series.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.recorded = 0
        self.dropped = 0
        self.feedback: dict[str, int] = {"negative": 0, "neutral": 0, "positive": 0}
        self.corrections = 0
        self.drift: dict[str, float] = {}
        self.drift_alerts: dict[str, bool] = {}

    def on_record(self, accepted: bool) -> None:
        with self._lock:
            if accepted:
                self.recorded += 1
            else:
                self.dropped += 1

    def on_feedback(self, rating: float, corrected: bool) -> None:
        kind = "positive" if rating > 0 else "negative" if rating < 0 else "neutral"
        with self._lock:
            self.feedback[kind] += 1
            self.corrections += int(corrected)

    def set_drift(self, metric: str, value: float, alert: bool | None = None) -> None:
        """Publish a drift statistic (e.g. "prompt_length_js", "feedback_rate") and whether it alerts."""
        with self._lock:
            self.drift[metric] = float(value)
            if alert is not None:
                self.drift_alerts[metric] = alert

    def render(self, traffic: bool = True, failed_writes: int | None = None) -> str:
        with self._lock:
            lines: list[str] = []
            if traffic:
                counters = [("lmopt_traffic_records_total", "Requests queued for the traffic store",
                             self.recorded),
                            ("lmopt_traffic_records_dropped_total",
                             "Sampled requests not recorded because the store's queue was full", self.dropped)]
                if failed_writes is not None:
                    counters.append(("lmopt_traffic_write_failures_total",
                                     "Queued records the store failed to write", failed_writes))
                counters.append(("lmopt_feedback_corrections_total", "Feedback with a corrected answer",
                                 self.corrections))
                for name, doc, value in counters:
                    lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter", f"{name} {value}"]
                lines += ["# HELP lmopt_feedback_total Feedback received by rating sign",
                          "# TYPE lmopt_feedback_total counter"]
                lines += [f'lmopt_feedback_total{{rating="{k}"}} {n}' for k, n in self.feedback.items()]
            for name, doc, values in (("lmopt_drift", "Drift statistic by metric", self.drift),
                                      ("lmopt_drift_alert", "1 when the drift metric is past its threshold",
                                       {k: int(v) for k, v in self.drift_alerts.items()})):
                if values:
                    lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge"]
                    lines += [f'{name}{{metric="{_label(k)}"}} {v}' for k, v in sorted(values.items())]
            return "\n".join(lines) + "\n" if lines else ""


def _label(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
