"""Recording served traffic and user feedback without slowing a request down.

`lmopt.serve` may not import `lmopt.monitor` (package layering), so this module declares what a
traffic store must offer (`TrafficSink`) and the server is handed one by its caller; the CLI passes
`lmopt.monitor.traffic.TrafficStore`. The server side (`Telemetry`) decides which requests are
sampled, remembers the response ids it issued (so feedback for a response that was not sampled, or
not written yet, is still accepted), and counts what it recorded, what was dropped and the feedback
in Prometheus metrics. A sink's `record` must return at once: the store queues the record and writes
(and scrubs PII) on its own thread.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from lmopt.serve.metrics import TelemetryMetrics


@dataclass
class TrafficRecord:
    """One served request as recorded (before PII scrubbing, which the store does)."""

    response_id: str
    """The id the completion returned (`chatcmpl-...`, `cmpl-...`); feedback refers to it."""
    endpoint: str
    """"chat.completions" or "completions"."""
    model: str
    """The served model name."""
    model_hash: str | None
    """Content hash of the served model (lmopt.models.content_hash), None when unknown."""
    prompt: str
    """The completion prompt, or the chat messages' contents joined by blank lines."""
    messages: list[dict[str, str]] | None
    """The chat messages ({role, content}); None for /v1/completions."""
    response: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """"stop", "length", "abort" (client gone), "error"."""
    stream: bool
    ttft_s: float | None
    """Seconds from arrival to the first generated token (None when none came)."""
    latency_s: float
    """Seconds from arrival to the end of the response."""
    created: float
    """Unix time the request arrived."""


@dataclass
class FeedbackRecord:
    """What a user said about one response (`POST /v1/feedback`)."""

    response_id: str
    rating: float
    """-1 (bad) .. 1 (good); thumbs down/up are -1/1."""
    correction: str | None
    """The answer the user would have wanted, if given."""
    comment: str | None
    created: float


class TrafficSink(Protocol):
    """Where records and feedback go (`lmopt.monitor.traffic.TrafficStore` implements it)."""

    def record(self, record: TrafficRecord) -> bool:
        """Queue one record without blocking; False when it was dropped (queue full or closed)."""
        ...

    def add_feedback(self, feedback: FeedbackRecord, issued: bool) -> bool:
        """Store feedback (may block: the server calls it off the event loop). `issued`: this server
        returned that response id. False, and nothing stored, when the id is neither issued nor stored."""
        ...

    def failed_writes(self) -> int:
        """Records accepted by `record` that could not be written (database errors)."""
        ...

    def close(self) -> None:
        """Write what is queued, then stop (the server calls it when it shuts down)."""
        ...


class Telemetry:
    """The server's side of recording: sampling, issued ids, metrics. No sink = nothing recorded."""

    def __init__(self, sink: TrafficSink | None = None, sample_rate: float = 1.0,
                 model_hash: str | None = None, seed: int | None = None,
                 remember_ids: int = 100_000) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {sample_rate}")
        self.sink, self.sample_rate, self.model_hash = sink, sample_rate, model_hash
        self.metrics = TelemetryMetrics()
        self._random = random.Random(seed)
        self._issued: OrderedDict[str, None] = OrderedDict()  # the most recent ids, oldest first
        self._remember = remember_ids

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    def sampled(self) -> bool:
        """Decide at arrival whether this request is recorded (unsampled ones cost nothing more)."""
        return self.sink is not None and self._random.random() < self.sample_rate

    def issued(self, response_id: str) -> None:
        """Remember an id this server returned (a bounded set: the last `remember_ids`)."""
        if self.sink is None:
            return
        self._issued[response_id] = None
        if len(self._issued) > self._remember:
            self._issued.popitem(last=False)

    def record(self, record: TrafficRecord) -> None:
        """Hand a record to the sink; never waits (a full queue drops it and counts the drop)."""
        if self.sink is None:
            return
        accepted = self.sink.record(record)
        self.metrics.on_record(accepted)

    async def feedback(self, feedback: FeedbackRecord) -> bool:
        """Store feedback off the event loop; False when the response id is unknown."""
        if self.sink is None:
            return False
        known = await asyncio.to_thread(self.sink.add_feedback, feedback, feedback.response_id in self._issued)
        if known:
            self.metrics.on_feedback(feedback.rating, feedback.correction is not None)
        return known

    def set_drift(self, metric: str, value: float, alert: bool | None = None) -> None:
        """Publish a drift figure on /metrics (`lmopt_drift{metric=...}`, `lmopt_drift_alert`)."""
        self.metrics.set_drift(metric, value, alert)

    def render(self) -> str:
        failed = self.sink.failed_writes() if self.sink is not None else None
        return self.metrics.render(traffic=self.sink is not None, failed_writes=failed)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


def chat_prompt_text(messages: list[dict[str, Any]]) -> str:
    """The text of a chat, for drift statistics: each message's content, blank-line separated."""
    return "\n\n".join(str(m.get("content") or "") for m in messages)
