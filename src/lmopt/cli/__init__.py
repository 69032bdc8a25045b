"""The `lmopt` command line. Every verb is a one-step recipe or a view on the registry.

Stages add their own verbs: a module listed in COMMAND_MODULES exposes `register(app)`.
Bad input ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import typer

from lmopt.errors import LmoptError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a pretrained language model better and cheaper, every step measured.")

COMMAND_MODULES = [
    "lmopt.data.cli",
    "lmopt.train.cli",
    "lmopt.tune.cli",
    "lmopt.compress.quantize.cli",
    "lmopt.compress.prune.cli",
    "lmopt.serve.cli",
]

DataDir = typer.Option(None, "--data-dir", help="Evaluation data dir (shared/data layout).")
Registry = typer.Option(None, "--registry", help="SQLAlchemy URL of the run registry.")
Json = typer.Option(None, "--json", help="Write the results to this JSON file.")
Dtype = typer.Option("auto", "--dtype", help="auto (bf16 where the CPU has it), float32, bfloat16.")


def console() -> Any:
    from rich.console import Console

    return Console()


def open_registry(url: str | None) -> Any:
    from lmopt.monitor import Registry as Reg

    return Reg(url)


def emit(results: dict[str, Any], json_path: Path | None) -> None:
    if json_path:
        from lmopt.io import write_json

        write_json(json_path, results)
        console().print(f"wrote {json_path}")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="Alias, .gguf file, HF directory or hub id."),
    task: list[str] = typer.Option(["pydoc"], "--task", "-t", help="Task (repeatable)."),
    limit: int | None = typer.Option(None, "--limit", help="First N items / windows."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Perplexity window in tokens."),
    batch_size: int = typer.Option(8, "--batch-size"),
    data_dir: Path | None = DataDir, dtype: str = Dtype, registry: str | None = Registry,
    json_out: Path | None = Json,
) -> None:
    """Evaluate a model: perplexity (pydoc, wikitext2, a file) and multiple-choice accuracy."""
    from lmopt.evaluate import evaluate_model
    from lmopt.report import results_table

    results = evaluate_model(model, task, limit=limit, seq_len=seq_len, data_dir=data_dir, dtype=dtype,
                             batch_size=batch_size, registry=open_registry(registry))
    console().print(results_table(results))
    emit(results, json_out)


@app.command("bench")
def bench_cmd(
    model: str = typer.Argument(...),
    new_tokens: int = typer.Option(64, "--new-tokens"),
    repeats: int = typer.Option(3, "--repeats"),
    dtype: str = Dtype, registry: str | None = Registry, json_out: Path | None = Json,
) -> None:
    """Measure prefill and decode speed, time to first token, memory and size on disk."""
    from lmopt.evaluate.step import BenchConfig, bench_step
    from lmopt.pipeline.steps import StepContext
    from lmopt.report import speed_table

    ctx = StepContext(model=model, data=None, output=Path("."), registry=open_registry(registry), dtype=dtype)
    speed = bench_step(ctx, BenchConfig(new_tokens=new_tokens, repeats=repeats)).metrics["speed"]
    console().print(speed_table(speed))
    emit({"model": model, "speed": speed}, json_out)


@app.command("run")
def run_cmd(recipe: Path = typer.Argument(..., help="Recipe YAML."), registry: str | None = Registry,
            json_out: Path | None = Json) -> None:
    """Run a recipe: its steps (cached, resumable) and evaluations."""
    from lmopt.pipeline import load_recipe_file, run_recipe

    parsed, base = load_recipe_file(recipe)
    summary = run_recipe(parsed, base, registry=open_registry(registry), log=console().print)
    console().print_json(json.dumps(summary, default=str))
    emit(summary, json_out)


@app.command("runs")
def runs_cmd(kind: str | None = typer.Option(None, "--kind"),
             model: str | None = typer.Option(None, "--model"),
             limit: int = typer.Option(20, "--limit"), registry: str | None = Registry) -> None:
    """List recent runs in the registry."""
    from lmopt.report import runs_table

    console().print(runs_table(open_registry(registry).query(kind=kind, model=model, limit=limit)))


@app.command("models")
def models_cmd() -> None:
    """List the embedded model and the models converted or produced in the cache."""
    from lmopt.report import models_table

    console().print(models_table())


@app.command("hw")
def hw_cmd(model: str | None = typer.Option(None, "--model", help="Also show this model's decode roofline."),
           json_out: Path | None = Json) -> None:
    """Describe the hardware, measure memory bandwidth, and show what lmopt will use."""
    from lmopt.hardware import decode_roofline, detect_hardware, measure_bandwidth, weight_bytes_per_token
    from lmopt.report import hardware_table

    hw = detect_hardware()
    hw.bandwidth_gbs = round(measure_bandwidth(device=hw.device if hw.device == "cuda" else "cpu"), 2)
    info: dict[str, Any] = hw.to_dict()
    if model:
        from lmopt.models import load_model

        loaded = load_model(model)
        roofline = decode_roofline(loaded.model, hw.bandwidth_gbs)
        info["model"] = {"ref": model, "weight_bytes_per_token": weight_bytes_per_token(loaded.model),
                         "decode_roofline_tokens_per_s": round(roofline, 1)}
    console().print(hardware_table(info))
    emit(info, json_out)


def _register_stage_commands() -> None:
    for module in COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                continue  # that stage has no commands yet
            raise
        mod.register(app)


_register_stage_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning LmoptError into one line and exit status 2."""
    try:
        app(args=argv, standalone_mode=True)
    except LmoptError as exc:
        print(f"lmopt: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lmopt: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
