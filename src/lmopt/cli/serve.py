"""`lmopt serve MODEL` and `lmopt bench-serve URL`: options generated from the serving configs."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lmopt.cli.options import as_parameters, build_command, config_from_cli, config_options
from lmopt.errors import LmoptError
from lmopt.io import write_json
from lmopt.models.load import resolve
from lmopt.serve.bench import LoadConfig, run_load
from lmopt.serve.config import EngineConfig, ServerConfig, TelemetryConfig


def _param(name: str, default: Any, *decls: str, annotation: Any, help: str,
           kind: Any = inspect.Parameter.KEYWORD_ONLY) -> inspect.Parameter:
    maker = typer.Argument if not decls else typer.Option
    info = maker(default, help=help) if not decls else maker(default, *decls, help=help)
    return inspect.Parameter(name, kind, annotation=annotation, default=info)


def _serve_command() -> Any:
    reserved = {"model", "dtype", "engine", "config", "set"}
    engine_opts = config_options(EngineConfig, {}, reserved)
    server_opts = config_options(ServerConfig, {"name": "model_name"}, reserved | {"model_name"})
    telemetry_opts = config_options(TelemetryConfig, {}, reserved)
    params = [
        _param("model", ..., annotation=str, help="Alias, .gguf file, HF/lmopt directory or hub id.",
               kind=inspect.Parameter.POSITIONAL_OR_KEYWORD),
        _param("dtype", "auto", "--dtype", annotation=str, help="auto, float32, bfloat16."),
        _param("engine", "lmopt", "--engine", annotation=str, help="lmopt, or vllm (when vLLM is installed)."),
        _param("set", None, "--set", annotation=list[str] | None,
               help="Any engine.*, server.* or telemetry.* field, KEY=VALUE (repeatable)."),
        *as_parameters(engine_opts, 1, {}), *as_parameters(server_opts, 1, {}),
        *as_parameters(telemetry_opts, 1, {}),
    ]

    def body(values: dict[str, Any]) -> None:
        sets = values.get("set") or []
        picked = {prefix: [s.removeprefix(prefix + ".") for s in sets if s.startswith(prefix + ".")]
                  for prefix in ("engine", "server", "telemetry")}
        engine_config = EngineConfig.parse(
            config_from_cli(values, engine_opts, None, picked["engine"], EngineConfig), where="lmopt serve")
        server_config = ServerConfig.parse(
            config_from_cli(values, server_opts, None, picked["server"], ServerConfig), where="lmopt serve")
        from lmopt.serve.server import serve, serve_vllm  # lazy: torch; `lmopt --help` stays fast

        telemetry = TelemetryConfig.parse(
            config_from_cli(values, telemetry_opts, None, picked["telemetry"], TelemetryConfig), where="lmopt serve")
        if values["engine"] == "vllm":
            if telemetry.traffic:
                raise LmoptError("--traffic records what lmopt's engine serves; vLLM serves on its own "
                                 "(drop --traffic)")
            raise typer.Exit(serve_vllm(values["model"], engine_config, server_config, values["dtype"]))
        if values["engine"] != "lmopt":
            raise LmoptError(f"--engine: unknown engine '{values['engine']}' (choose lmopt or vllm)")
        traffic = None
        if telemetry.traffic:
            from lmopt.monitor.traffic import TrafficStore  # lazy: sqlalchemy only when recording

            traffic = TrafficStore(telemetry.traffic_url, scrub_pii=telemetry.scrub_pii,
                                   max_rows=telemetry.traffic_max_rows, max_days=telemetry.traffic_max_days)
        serve(values["model"], engine_config, server_config, values["dtype"], traffic=traffic,
              sample_rate=telemetry.sample_rate, on_app=_drift_monitor(telemetry, traffic))

    return build_command("serve", "Serve a model behind an OpenAI-compatible API (continuous batching, "
                         "streaming).", params, body)


def _drift_monitor(telemetry: TelemetryConfig, traffic: Any) -> Any:
    """A callback that starts the drift check beside the server, when a reference is given."""
    if telemetry.drift_reference is None:
        return None
    from lmopt.monitor import Registry  # lazy: sqlalchemy only when monitoring
    from lmopt.monitor.drift_monitor import DriftMonitorConfig, start_drift_monitor

    config = DriftMonitorConfig(reference=telemetry.drift_reference, window=telemetry.drift_window,
                                every_requests=telemetry.drift_every, webhook=telemetry.drift_webhook)
    return lambda app: start_drift_monitor(traffic, config, publish=app.state.telemetry.set_drift,
                                           registry=Registry())


def _bench_serve_command() -> Any:
    reserved = {"url", "tokenizer", "json_out"}
    options = config_options(LoadConfig, {}, reserved, {"concurrency": "-c", "requests": "-n"})
    params = [
        _param("url", ..., annotation=str, help="Server base URL, e.g. http://127.0.0.1:8000",
               kind=inspect.Parameter.POSITIONAL_OR_KEYWORD),
        _param("tokenizer", None, "--tokenizer", annotation=str | None,
               help="Model ref whose tokenizer makes exact-length prompts."),
        _param("json_out", None, "--json", annotation=Path | None, help="Write the results to this JSON file."),
        *as_parameters(options, 1, {"concurrency": "-c", "requests": "-n"}),
    ]

    def body(values: dict[str, Any]) -> None:
        fields = config_from_cli(values, options, None, [], LoadConfig)
        config = LoadConfig.parse({"url": values["url"], **fields}, where="lmopt bench-serve")
        from transformers import AutoTokenizer  # lazy: `lmopt --help` stays fast

        tok = AutoTokenizer.from_pretrained(str(resolve(values["tokenizer"]))) if values["tokenizer"] else None
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        result = run_load(config, tok)
        table = Table(title="bench-serve")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in result.items():
            table.add_row(key, str(value))
        Console().print(table)
        if values["json_out"]:
            write_json(values["json_out"], result)

    return build_command("bench-serve", "Load-test an OpenAI-compatible server: output tokens/s, TTFT and "
                         "latency p50/p99.", params, body)


def register(app: typer.Typer) -> None:
    app.command("serve")(_serve_command())
    app.command("bench-serve")(_bench_serve_command())
