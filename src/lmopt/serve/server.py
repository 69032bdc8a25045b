"""Running the server: `serve()` for the CLI, `BackgroundServer` for tests and benchmarks, vLLM launch.

Traffic recording: pass a `TrafficSink` (the CLI passes `lmopt.monitor.traffic.TrafficStore`) and a
sampling rate; the app records the sampled requests there, takes feedback, and closes the sink when
it shuts down.

uvicorn's graceful shutdown (Ctrl-C / SIGTERM) stops accepting connections, waits for in-flight
HTTP requests (up to `drain_timeout_s`), then the app's lifespan stops the engine.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmopt.database import masked
from lmopt.errors import LmoptError
from lmopt.models import ModelCard, load_model
from lmopt.models.load import resolve
from lmopt.serve.config import EngineConfig, ServerConfig
from lmopt.serve.telemetry import Telemetry, TrafficSink


def build_app(model: str, engine_config: EngineConfig, server_config: ServerConfig,
              dtype: str = "auto", traffic: TrafficSink | None = None, sample_rate: float = 1.0) -> Any:
    """Load the model, start the engine thread, return the FastAPI app.

    `traffic`: where sampled requests and feedback are recorded (None: nothing is, and /v1/feedback
    answers 501); `sample_rate`: the share of requests recorded, 0..1.
    """
    if not 0.0 <= sample_rate <= 1.0:
        raise LmoptError(f"sample rate must be between 0 and 1 (a share of requests), got {sample_rate}")
    # lazy: these load torch; vllm_command/serve_vllm (a vLLM subprocess) need none of it
    from lmopt.serve.api import create_app
    from lmopt.serve.async_engine import AsyncEngine
    from lmopt.serve.engine import Engine

    loaded = load_model(model, dtype=dtype)
    telemetry = Telemetry(traffic, sample_rate, model_hash=loaded.hash if traffic is not None else None)
    engine = AsyncEngine(Engine(loaded, engine_config))
    return create_app(engine, server_config, model_name=server_config.model_name or str(model),
                      telemetry=telemetry)


def _uvicorn_server(app: Any, config: ServerConfig) -> Any:
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                         timeout_graceful_shutdown=int(config.drain_timeout_s) or None))


def serve(model: str, engine_config: EngineConfig, server_config: ServerConfig, dtype: str = "auto",
          log: Any = print, traffic: TrafficSink | None = None, sample_rate: float = 1.0,
          on_app: Callable[[Any], Any] | None = None) -> None:
    """Serve `model` until interrupted (blocking); see `build_app` for `traffic` and `sample_rate`.
    `on_app(app)` runs once the app is built (the CLI starts the drift monitor there)."""
    app = build_app(model, engine_config, server_config, dtype, traffic, sample_rate)
    if on_app is not None:
        on_app(app)
    log(f"lmopt serving {model} on http://{server_config.host}:{server_config.port}/v1 "
        f"(max batch {engine_config.max_batch}{', API key required' if server_config.api_key else ''})")
    if traffic is not None:
        where = getattr(traffic, "url", None)
        log(f"recording {100 * sample_rate:g}% of requests" + (f" to {masked(where)}" if where else ""))
    _uvicorn_server(app, server_config).run()


class BackgroundServer:
    """Serve an app on 127.0.0.1 (an ephemeral port by default) in a thread; a context manager.

        with BackgroundServer(app) as srv:
            OpenAI(base_url=srv.url + "/v1", api_key="x")...
    """

    def __init__(self, app: Any, config: ServerConfig | None = None) -> None:
        config = config or ServerConfig(port=0)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((config.host, config.port))
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.server = _uvicorn_server(app, config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown: in-flight requests finish first (see the module docstring)."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.sock.close()


def vllm_command(model_dir: str | Path, engine_config: EngineConfig, server_config: ServerConfig,
                 dtype: str = "auto") -> list[str]:
    """The `vllm serve` command line equivalent to an lmopt serve configuration."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", server_config.host, "--port", str(server_config.port),
           "--max-num-seqs", str(engine_config.max_batch),
           "--max-model-len", str(engine_config.max_model_len),
           "--max-num-batched-tokens", str(max(engine_config.max_step_tokens, engine_config.max_model_len)),
           "--dtype", {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16"}.get(dtype, dtype),
           "--served-model-name", server_config.model_name or str(model_dir)]
    if server_config.api_key:
        cmd += ["--api-key", server_config.api_key]
    return cmd


def serve_vllm(model: str, engine_config: EngineConfig, server_config: ServerConfig,
               dtype: str = "auto") -> int:
    """Serve through vLLM (same OpenAI API) when it is installed; returns vLLM's exit status."""
    if importlib.util.find_spec("vllm") is None:
        raise LmoptError("--engine vllm needs vLLM installed (pip install vllm; it brings its own torch, "
                         "so use a separate environment); see docs/serve.md")
    where = resolve(model)
    card = ModelCard.read(where) if isinstance(where, Path) and (where / "lmopt.json").exists() else None
    if card is not None and card.format != "hf":
        raise LmoptError(f"{where}: vLLM loads plain HF checkpoints; this model is in lmopt's "
                         f"'{card.format}' format (export it to HF first)")
    cmd = vllm_command(where, engine_config, server_config, dtype)
    if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
        raise LmoptError(f"cannot run {cmd[0]}")
    return subprocess.call(cmd)
