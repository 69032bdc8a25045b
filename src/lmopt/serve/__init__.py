"""Serving: a continuous-batching engine behind an async, OpenAI-compatible HTTP API.

- `attention.py`  rotary embedding and attention over the slot cache (pure tensor math)
- `kv_cache.py`   pre-allocated, compact per-request KV slots sized from a memory limit
- `runner.py`     drives the HF model's own submodules over a flat batch of decode + prefill tokens
- `scheduler.py`  continuous batching: token budget per iteration, chunked prefill, join/leave
- `sampling.py`   greedy, temperature, top-k, top-p, seeds
- `text.py`       incremental detokenization and stop strings
- `engine.py`     the loop tying them together (`Engine`, `EngineConfig`, `SamplingParams`)
- `async_engine.py`, `protocol.py`, `api.py`, `server.py`  the FastAPI/uvicorn OpenAI-compatible server
- `bench.py`      load generator (Poisson arrivals, mixed lengths, TTFT and latency percentiles)
- `cli.py`        `lmopt serve` and `lmopt bench-serve`

Nothing heavy is imported here: `from lmopt.serve import Engine` loads torch on first use.
"""

from __future__ import annotations

from typing import Any

from lmopt.serve.config import EngineConfig, ServerConfig

_LAZY = {"Engine": "lmopt.serve.engine", "Completion": "lmopt.serve.engine",
         "SamplingParams": "lmopt.serve.sampling", "AsyncEngine": "lmopt.serve.async_engine",
         "create_app": "lmopt.serve.api", "serve": "lmopt.serve.server"}

__all__ = ["EngineConfig", "ServerConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmopt.serve' has no attribute '{name}'")
