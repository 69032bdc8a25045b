"""CLI verbs of the serving stage: `lmopt serve MODEL` and `lmopt bench-serve URL`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer


def _table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="bench-serve")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    return table


def register(app: typer.Typer) -> None:
    """Add `serve` and `bench-serve` to the lmopt app."""

    @app.command("serve")
    def serve_cmd(
        model: str = typer.Argument(..., help="Alias, .gguf file, HF/lmopt directory or hub id."),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default)."),
        port: int = typer.Option(8000, "--port"),
        max_batch: int = typer.Option(32, "--max-batch", help="Most requests decoding together."),
        max_tokens: int = typer.Option(1024, "--max-tokens", help="Most output tokens per request."),
        api_key: str | None = typer.Option(None, "--api-key", envvar="LMOPT_API_KEY",
                                           help="Require 'Authorization: Bearer KEY'."),
        max_model_len: int = typer.Option(2048, "--max-model-len", help="Prompt + output tokens."),
        max_prompt_tokens: int | None = typer.Option(None, "--max-prompt-tokens"),
        kv_cache_mb: float = typer.Option(1024.0, "--kv-cache-mb", help="KV cache memory limit."),
        max_step_tokens: int = typer.Option(1024, "--max-step-tokens", help="Token budget per iteration."),
        prefill_chunk: int = typer.Option(512, "--prefill-chunk", help="Prompt tokens per request per step."),
        max_queue: int = typer.Option(256, "--max-queue", help="Waiting requests before answering 429."),
        name: str | None = typer.Option(None, "--name", help="Model id shown by /v1/models."),
        dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16."),
        engine: str = typer.Option("lmopt", "--engine", help="lmopt, or vllm (when vLLM is installed)."),
    ) -> None:
        """Serve a model behind an OpenAI-compatible API (continuous batching, streaming)."""
        from lmopt.errors import LmoptError
        from lmopt.serve.config import EngineConfig, ServerConfig

        engine_config = EngineConfig.parse(
            {"max_batch": max_batch, "max_model_len": max_model_len, "kv_cache_mb": kv_cache_mb,
             "max_step_tokens": max(max_step_tokens, max_batch), "prefill_chunk": prefill_chunk,
             "max_queue": max_queue}, where="lmopt serve")
        server_config = ServerConfig.parse(
            {"host": host, "port": port, "api_key": api_key, "max_tokens": max_tokens, "model_name": name,
             "max_prompt_tokens": max_prompt_tokens}, where="lmopt serve")
        if engine == "vllm":
            from lmopt.serve.server import serve_vllm

            raise typer.Exit(serve_vllm(model, engine_config, server_config, dtype))
        if engine != "lmopt":
            raise LmoptError(f"--engine: unknown engine '{engine}' (choose lmopt or vllm)")
        from lmopt.serve.server import serve

        serve(model, engine_config, server_config, dtype)

    @app.command("bench-serve")
    def bench_serve_cmd(
        url: str = typer.Argument(..., help="Server base URL, e.g. http://127.0.0.1:8000"),
        concurrency: int = typer.Option(8, "--concurrency", "-c"),
        requests: int = typer.Option(64, "--requests", "-n"),
        prompt_len: str = typer.Option("32:256", "--prompt-len", help="Tokens: N or LO:HI (uniform)."),
        output_len: str = typer.Option("32:128", "--output-len", help="Tokens: N or LO:HI (uniform)."),
        rate: float | None = typer.Option(None, "--rate", help="Poisson arrivals/s (default: all at once)."),
        seed: int = typer.Option(0, "--seed"),
        api_key: str | None = typer.Option(None, "--api-key", envvar="LMOPT_API_KEY"),
        model: str | None = typer.Option(None, "--model", help="Model id (default: the server's first)."),
        tokenizer: str | None = typer.Option(None, "--tokenizer",
                                             help="Model ref whose tokenizer makes exact-length prompts."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the results to this JSON file."),
    ) -> None:
        """Load-test an OpenAI-compatible server: output tokens/s, TTFT and latency p50/p99."""
        from rich.console import Console

        from lmopt.serve.bench import LoadConfig, run_load

        config = LoadConfig.parse({"url": url, "concurrency": concurrency, "requests": requests,
                                   "prompt_len": prompt_len, "output_len": output_len, "rate": rate,
                                   "seed": seed, "api_key": api_key, "model": model},
                                  where="lmopt bench-serve")
        tok = None
        if tokenizer:
            from transformers import AutoTokenizer

            from lmopt.models.load import resolve

            tok = AutoTokenizer.from_pretrained(str(resolve(tokenizer)))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        result = run_load(config, tok)
        Console().print(_table(result))
        if json_out:
            from lmopt.io import write_json

            write_json(json_out, result)
