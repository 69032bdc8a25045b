"""`lmopt prune`: a one-step recipe around the `prune` step (heavy imports stay inside the command).

    lmopt prune MODEL --method sparsegpt --sparsity 0.5 [--pattern 2:4] --output DIR
    lmopt prune MODEL --structured mlp=0.25,heads=0.25,layers=4 --output DIR
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lmopt.errors import LmoptError

STRUCTURED_KEYS = {"mlp": float, "heads": float, "layers": int, "head_mode": str, "importance": str,
                   "refit": lambda v: v.lower() in ("1", "true", "yes"), "round_to": int}


def parse_structured(spec: str) -> dict[str, Any]:
    """'mlp=0.25,heads=0.25,layers=4' -> {"mlp": 0.25, "heads": 0.25, "layers": 4}."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in STRUCTURED_KEYS:
            keys = ", ".join(STRUCTURED_KEYS)
            raise LmoptError(f"--structured: '{part}' is not KEY=VALUE with KEY in {keys}")
        try:
            out[key] = STRUCTURED_KEYS[key](value.strip())
        except ValueError:
            raise LmoptError(f"--structured: {key}={value!r} is not a valid value") from None
    if not out:
        raise LmoptError("--structured: give at least one of mlp=F, heads=F, layers=N")
    return out


def step_config(method: str | None, sparsity: float | None, pattern: str | None, structured: str | None,
                calibration: dict[str, Any]) -> dict[str, Any]:
    """The `prune` step's config from the command-line options."""
    if structured is not None:
        if method not in (None, "structured") or sparsity is not None or pattern is not None:
            raise LmoptError("--structured cannot be combined with --method/--sparsity/--pattern")
        return {"method": "structured", **parse_structured(structured), "calibration": calibration}
    config: dict[str, Any] = {"method": method or "wanda"}
    if sparsity is not None:
        config["sparsity"] = sparsity
    if pattern is not None:
        config["pattern"] = pattern
    if config["method"] != "magnitude":
        config["calibration"] = calibration
    return config


def register(app: typer.Typer) -> None:
    @app.command("prune")
    def prune_cmd(
        model: str = typer.Argument(..., help="Alias, .gguf file, HF directory or hub id."),
        method: str | None = typer.Option(None, "--method", help="magnitude, wanda (default) or sparsegpt."),
        sparsity: float | None = typer.Option(None, "--sparsity", help="Fraction of weights removed (0.5)."),
        pattern: str | None = typer.Option(None, "--pattern", help="N:M semi-structured pattern, e.g. 2:4."),
        structured: str | None = typer.Option(None, "--structured",
                                              help="Structured pruning, e.g. mlp=0.25,heads=0.25,layers=4."),
        output: Path = typer.Option(..., "--output", "-o", help="Directory for the pruned model."),
        calib_source: str = typer.Option("pydoc-train", "--calib-source", help="Calibration text source."),
        calib_samples: int = typer.Option(64, "--calib-samples", help="Calibration windows."),
        calib_seq_len: int = typer.Option(512, "--calib-seq-len", help="Tokens per calibration window."),
        recover_minutes: float | None = typer.Option(None, "--recover-minutes",
                                                     help="Structured: distill from the unpruned model."),
        recover_data: str = typer.Option("pydoc-train", "--recover-data", help="Recovery training text."),
        eval_task: list[str] = typer.Option([], "--eval", help="Evaluate before/after (repeatable)."),
        limit: int | None = typer.Option(None, "--limit", help="First N windows/items per --eval."),
        data_dir: Path | None = typer.Option(None, "--data-dir", help="Evaluation data dir (shared/data)."),
        registry: str | None = typer.Option(None, "--registry", help="SQLAlchemy URL of the run registry."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the summary to this JSON file."),
    ) -> None:
        """Prune a model: sparsity (magnitude, Wanda, SparseGPT; N:M) or structured shrinking."""
        from lmopt.cli import console, emit, open_registry
        from lmopt.pipeline import one_step_recipe, run_recipe

        calibration = {"source": calib_source, "n_samples": calib_samples, "seq_len": calib_seq_len}
        config = step_config(method, sparsity, pattern, structured, calibration)
        if recover_minutes is not None:
            config["recover"] = {"data": recover_data, "distill": {"max_minutes": recover_minutes}}
        fields: dict[str, Any] = {"output": str(output.resolve()),
                                  "data_dir": str(data_dir) if data_dir else None}
        if eval_task:
            fields["evaluate"] = {"tasks": eval_task, "limit": limit, "baseline": True}
        recipe = one_step_recipe("prune", config, model, **fields)
        summary = run_recipe(recipe, Path.cwd(), registry=open_registry(registry), log=console().print)
        console().print(_report_table(summary["steps"][-1]["metrics"]))
        console().print(f"wrote {summary['output']}")
        emit(summary, json_out)


def _report_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="pruning")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if key != "block_influence":
            table.add_row(key, str(value))
    return table
