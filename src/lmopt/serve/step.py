"""The `serve-bench` step: serve the current model on loopback and load-test it (model unchanged).

```yaml
steps:
  - serve-bench: {concurrency: [1, 4, 16], requests: 32, prompt_len: [32, 256], output_len: [32, 128]}
```
"""

from __future__ import annotations

from pydantic import Field

from lmopt.configs import Config
from lmopt.models import load_model
from lmopt.serve.api import create_app
from lmopt.serve.async_engine import AsyncEngine
from lmopt.serve.bench import LoadConfig, generate_baseline, make_workload, run_load
from lmopt.serve.config import EngineConfig, ServerConfig
from lmopt.serve.engine import Engine
from lmopt.serve.server import BackgroundServer
from lmopt.step import Step, StepContext, StepResult


class ServeBenchConfig(Config):
    """Load tests of the current model served on 127.0.0.1, one per concurrency level."""

    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16], min_length=1)
    """Concurrency levels, one load test each, same prompts."""
    requests: int = Field(default=32, ge=1)
    """Requests per load test."""
    prompt_len: tuple[int, int] = (32, 256)
    """Prompt tokens, uniform in [lo, hi]."""
    output_len: tuple[int, int] = (32, 128)
    """Output tokens, uniform in [lo, hi] (generated exactly: ignore_eos)."""
    rate: float | None = Field(default=None, gt=0)
    """Poisson arrivals per second (None: all at once)."""
    baseline: bool = False
    """Also serve the same prompts one at a time with transformers `generate`."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """The serving engine's settings (batch, KV cache, token budget)."""


def serve_bench_step(ctx: StepContext, config: ServeBenchConfig) -> StepResult:
    """Serve the current model (OpenAI API on 127.0.0.1) and measure throughput and latency."""
    loaded = load_model(ctx.require_model(), dtype=ctx.dtype)
    server_config = ServerConfig(port=0, max_tokens=config.output_len[1])
    app = create_app(AsyncEngine(Engine(loaded, config.engine)), server_config, model_name=str(ctx.model))
    results: dict = {"engine": {}}
    shape = {"requests": config.requests, "prompt_len": config.prompt_len, "output_len": config.output_len,
             "rate": config.rate}
    with BackgroundServer(app, server_config) as srv:
        for c in config.concurrency:
            load = LoadConfig(url=srv.url, concurrency=c, **shape)
            results["engine"][f"c{c}"] = run_load(load, jobs=make_workload(load, loaded.tokenizer))
    if config.baseline:
        jobs = make_workload(LoadConfig(url="-", **shape), loaded.tokenizer)  # the same prompts
        results["generate"] = generate_baseline(loaded.model, loaded.tokenizer, jobs)
    return StepResult(metrics=results, model_hash=loaded.hash)


SERVE_BENCH = Step("serve-bench", ServeBenchConfig, serve_bench_step, cache=False)
