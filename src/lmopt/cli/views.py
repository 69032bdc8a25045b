"""Verbs that look rather than change: `run` (a recipe), `runs`, `hw`, `data stats`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lmopt.data.stats import dataset_stats
from lmopt.hardware import decode_roofline, detect_hardware, measure_bandwidth, weight_bytes_per_token
from lmopt.io import write_json
from lmopt.models import load_model
from lmopt.monitor import Registry, enable_alias_references
from lmopt.native import status as native_status
from lmopt.pipeline import load_recipe_file, run_recipe
from lmopt.report import hardware_table, runs_table

RegistryOpt = typer.Option(None, "--registry", help="SQLAlchemy URL of the run registry.")
JsonOpt = typer.Option(None, "--json", help="Write the results to this JSON file.")


def kernel_table(plan: list[dict[str, Any]]) -> Table:
    """Which path each class of linear layer runs at which row counts, and why (`autotune.kernel_plan`)."""
    table = Table(title="kernels (chosen by measurement on this CPU)")
    for column in ("layers", "shape", "format", "paths", "why"):
        table.add_column(column)
    for entry in plan:
        table.add_row(f"{entry['layers']} x{entry['count']}", str(entry["shape"]), entry["format"],
                      str(entry["paths"]), str(entry.get("why", "")))
    return table


def emit(results: dict[str, Any], json_path: Path | None, console: Console) -> None:
    if json_path:
        write_json(json_path, results)
        console.print(f"wrote {json_path}")


def run_cmd(recipe: Path = typer.Argument(..., help="Recipe YAML."), registry: str | None = RegistryOpt,
            json_out: Path | None = JsonOpt) -> None:
    """Run a recipe: its steps (cached, resumable) and evaluations."""
    console = Console()
    parsed, base = load_recipe_file(recipe)
    reg = Registry(registry)
    enable_alias_references(reg.url)  # a recipe's `model: "@production"` resolves in this registry
    summary = run_recipe(parsed, base, registry=reg, log=console.print)
    console.print_json(json.dumps(summary, default=str))
    emit(summary, json_out, console)


def runs_cmd(kind: str | None = typer.Option(None, "--kind", help="Step name: evaluate, quantize, ..."),
             model: str | None = typer.Option(None, "--model"),
             limit: int = typer.Option(20, "--limit"), registry: str | None = RegistryOpt) -> None:
    """List recent runs in the registry."""
    Console().print(runs_table(Registry(registry).query(kind=kind, model=model, limit=limit)))


def hw_cmd(model: str | None = typer.Option(None, "--model", help="Also show this model's decode roofline."),
           json_out: Path | None = JsonOpt) -> None:
    """Describe the hardware, measure memory bandwidth, and show what lmopt will use."""
    hw = detect_hardware()
    hw.bandwidth_gbs = round(measure_bandwidth(device=hw.device if hw.device == "cuda" else "cpu"), 2)
    info: dict[str, Any] = hw.to_dict()
    info["native_kernels"] = native_status()
    if model:
        from lmopt.compress.quantize.autotune import kernel_plan  # lazy: torch; `lmopt --help` stays fast

        loaded = load_model(model)
        roofline = decode_roofline(loaded.model, hw.bandwidth_gbs)
        info["model"] = {"ref": model, "weight_bytes_per_token": weight_bytes_per_token(loaded.model),
                         "decode_roofline_tokens_per_s": round(roofline, 1), "kernels": kernel_plan(loaded.model)}
    console = Console()
    console.print(hardware_table(info))
    if model:
        console.print(kernel_table(info["model"]["kernels"]))
    emit(info, json_out, console)


def stats_cmd(input: Path = typer.Argument(..., help="Dataset (any format `lmopt data clean` reads)."),
              text_field: list[str] | None = typer.Option(None, "--text-field",
                                                          help="Text field(s) (repeatable; default: guess)."),
              json_out: Path | None = JsonOpt) -> None:
    """Rows, bad rows (with line numbers), lengths, exact duplicates and PII found in INPUT."""
    fields = None if not text_field else (text_field[0] if len(text_field) == 1 else text_field)
    stats = dataset_stats(input, text_field=fields)
    console = Console()
    console.print_json(data=stats)
    emit(stats, json_out, console)


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("runs")(runs_cmd)
    app.command("hw")(hw_cmd)
    data_app.command("stats")(stats_cmd)
