"""Typed settings of the serving engine and of the HTTP server (documented where declared).

No torch here: the CLI builds these before anything heavy is imported.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from lmopt.configs import Config


class EngineConfig(Config):
    """How the continuous-batching engine uses memory and splits work into iterations."""

    version: int = 1
    max_batch: int = Field(default=32, ge=1)
    """Most requests in the running batch at once (= KV cache slots, if memory allows)."""
    max_model_len: int = Field(default=2048, ge=2)
    """Most tokens (prompt + output) of one request; each slot reserves this many."""
    kv_cache_mb: float = Field(default=1024.0, gt=0)
    """Memory limit of the KV cache; fewer slots than max_batch are made when it is too small."""
    max_step_tokens: int = Field(default=1024, ge=1)
    """Token budget of one iteration: one per decoding request, the rest for prefill chunks. Larger
    budgets prefill a burst of prompts in fewer, more efficient iterations (embedded model, 16 requests
    at once: p99 time to first token 2.3 s at 256, 1.8 s at 1024) at the cost of longer pauses for the
    requests already decoding."""
    prefill_chunk: int = Field(default=512, ge=1)
    """Most prompt tokens of one request processed in one iteration (chunked prefill)."""
    max_queue: int = Field(default=256, ge=0)
    """Requests waiting for a slot beyond which new ones are refused (HTTP 429)."""
    threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads (default: physical cores)."""
    quantized_dense_prefill: bool = True
    """Quantized linears with an int4/int8 kernel keep a dense bf16 copy of their weight for prompt
    chunks (the low-bit kernels are fast for a few rows, slow for many): faster prefill, more memory."""
    fuse_projections: bool = True
    """Run q/k/v and gate/up as one stacked matmul each (`lmopt.serve.fused`): fewer, larger GEMVs
    per decode step, at the cost of a stacked copy of those weights."""

    @model_validator(mode="after")
    def _budget_covers_batch(self) -> EngineConfig:
        if self.max_step_tokens < self.max_batch:
            raise ValueError(f"max_step_tokens ({self.max_step_tokens}) must be at least max_batch "
                             f"({self.max_batch}) so every running request decodes each iteration")
        return self


class ServerConfig(Config):
    """The OpenAI-compatible HTTP front: where it listens and what it accepts."""

    version: int = 1
    host: str = "127.0.0.1"
    """Loopback by default; bind 0.0.0.0 deliberately, with an API key."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port (0 = pick a free one)."""
    api_key: str | None = None
    """When set, requests must send `Authorization: Bearer <key>`."""
    model_name: str | None = None
    """The id reported by /v1/models and accepted in `model` (default: the model reference)."""
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    """Longest prompt accepted (default: the engine's max_model_len - 1)."""
    max_tokens: int = Field(default=1024, ge=1)
    """Most output tokens one request may ask for."""
    default_max_tokens: int = Field(default=256, ge=1)
    """Output tokens when a request does not say (capped by max_tokens and the context)."""
    drain_timeout_s: float = Field(default=30.0, ge=0)
    """On shutdown, how long in-flight requests may take to finish."""


class TelemetryConfig(Config):
    """What the server records about the requests it serves (`lmopt.monitor.traffic.TrafficStore`)."""

    version: int = 1
    traffic: bool = False
    """Record requests (prompt, response, token counts, latencies, model hash) and accept feedback at
    POST /v1/feedback. Recording never blocks a request: a bounded queue, drops counted in /metrics."""
    traffic_url: str | None = None
    """SQLAlchemy URL of the traffic store (default `$LMOPT_TRAFFIC`, else `$LMOPT_HOME/traffic.db`)."""
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of requests recorded (feedback is accepted for every response id the server returned)."""
    scrub_pii: bool = True
    """Replace e-mails, phones, IPs, cards and keys by typed placeholders before storage."""
    traffic_max_rows: int | None = Field(default=None, ge=1)
    """Keep at most this many recorded requests (oldest dropped)."""
    traffic_max_days: float | None = Field(default=None, gt=0)
    """Drop recorded requests older than this."""
    drift_reference: str | None = None
    """Check drift while serving: recorded prompts against this reference (a dataset file, or a traffic
    window such as `range:A..B`); alerts go to the log, /metrics (`lmopt_drift_alert`) and the webhook.
    Needs `traffic`."""
    drift_window: int = Field(default=200, ge=1)
    """Latest recorded requests compared with the reference at each check."""
    drift_every: int = Field(default=20, ge=1)
    """Check after this many new recorded requests."""
    drift_webhook: str | None = None
    """POST each alert as JSON to this URL."""

    @model_validator(mode="after")
    def _drift_needs_traffic(self) -> TelemetryConfig:
        if self.drift_reference is not None and not self.traffic:
            raise ValueError("drift_reference: drift is checked on recorded requests; turn on traffic")
        return self
