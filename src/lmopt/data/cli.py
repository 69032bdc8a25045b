"""`lmopt data clean|augment|stats`: the data stage's command-line verbs (registered by lmopt.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

data_app = typer.Typer(no_args_is_help=True, help="Clean, deduplicate, decontaminate and augment datasets.")

TextField = typer.Option(None, "--text-field", help="Text field(s) (repeatable; default: guess).")
Workers = typer.Option(0, "--workers", help="Worker processes (0 = one per core, 1 = none).")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _console() -> Any:
    from rich.console import Console

    return Console()


def _text_field(fields: list[str] | None) -> str | list[str] | None:
    return None if not fields else (fields[0] if len(fields) == 1 else fields)


@data_app.command("clean")
def clean_cmd(
    input: Path = typer.Argument(..., help="Dataset: .txt/.jsonl/.json/.csv/.parquet(.gz), a saved HF "
                                 "dataset or hf:NAME."),
    output: Path = typer.Option(..., "--output", "-o", help="Cleaned rows (jsonl)."),
    config: Path | None = typer.Option(None, "--config", help="A CleanConfig YAML; flags below override it."),
    dedup: str | None = typer.Option(None, "--dedup", help="none, exact, near (default) or semantic."),
    threshold: float | None = typer.Option(None, "--threshold", help="Near-duplicate Jaccard threshold."),
    pii: bool = typer.Option(False, "--pii", help="Replace e-mails, phones, IPs, cards, keys by "
                             "typed placeholders."),
    decontaminate: list[str] = typer.Option([], "--decontaminate", help="Evaluation set(s) to decontaminate "
                                            "against (repeatable or comma-separated): arc_easy, boolq, ..., "
                                            "pydoc, a file."),
    min_words: int | None = typer.Option(None, "--min-words", help="Least words per row (Gopher: 50)."),
    no_quality: bool = typer.Option(False, "--no-quality", help="Skip the quality rules."),
    language: str | None = typer.Option(None, "--language", help="Keep only this language (e.g. en)."),
    text_field: list[str] | None = TextField, workers: int = Workers,
    report: Path | None = typer.Option(None, "--report", help="Report dir (default: OUTPUT.report)."),
    keep_removed: bool = typer.Option(False, "--keep-removed", help="Also write removed.jsonl with reasons."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Evaluation data dir (shared/data)."),
) -> None:
    """Normalize, quality-filter, decontaminate, scrub PII and deduplicate INPUT into OUTPUT."""
    from lmopt.data.clean import clean
    from lmopt.data.config import CleanConfig

    cfg = CleanConfig.from_yaml(config) if config else CleanConfig()
    updates: dict[str, Any] = {"workers": workers or cfg.workers,
                               "keep_removed": keep_removed or cfg.keep_removed}
    if text_field:
        updates["text_field"] = _text_field(text_field)
    if decontaminate:
        updates["decontaminate"] = [name for value in decontaminate for name in value.split(",") if name]
    cfg = cfg.model_copy(update=updates)
    cfg.dedup = cfg.dedup.model_copy(update={k: v for k, v in (("mode", dedup), ("threshold", threshold))
                                             if v is not None})
    cfg.pii = cfg.pii.model_copy(update={"enabled": True} if pii else {})
    quality = {k: v for k, v in (("min_words", min_words), ("language", language)) if v is not None}
    cfg.quality = cfg.quality.model_copy(update={**quality, **({"enabled": False} if no_quality else {})})
    cfg = CleanConfig.parse(cfg.model_dump(), where="lmopt data clean")  # validate the overrides
    report_dir = report or output.with_name(output.name + ".report")
    result = clean(input, cfg, output=output, data_dir=data_dir, report_dir=report_dir)
    _print_report(result.report, output, report_dir)


def _print_report(report: Any, output: Path, report_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"clean: {report.rows_in} rows in, {report.rows_out} out")
    for col in ("filter", "in", "removed", "out"):
        table.add_column(col, justify="left" if col == "filter" else "right")
    for s in report.stage_counts():
        table.add_row(s["filter"], str(s["in"]), str(s["removed"]), str(s["out"]))
    console = _console()
    console.print(table)
    if report.pii:
        console.print("PII replaced: " + ", ".join(f"{k} {v}" for k, v in sorted(report.pii.items())))
    if report.bad_rows.get("total"):
        console.print(f"[yellow]{report.bad_rows['total']} bad rows skipped[/] (line numbers in the report)")
    console.print(f"wrote {output}; report in {report_dir}")


@data_app.command("augment")
def augment_cmd(
    input: Path = typer.Argument(..., help="Dataset (any format `lmopt data clean` reads)."),
    output: Path = typer.Option(..., "--output", "-o", help="Originals plus new rows (jsonl)."),
    method: list[str] = typer.Option(["swap", "delete", "insert"], "--method", "-m",
                                     help="swap, delete, insert, paraphrase (repeatable)."),
    per_row: int = typer.Option(2, "--per-row", help="New rows per original and method."),
    alpha: float = typer.Option(0.1, "--alpha", help="Share of words an EDA edit changes."),
    model: str | None = typer.Option(None, "--model", help="Model for paraphrases (alias, dir, hub id)."),
    seed: int = typer.Option(0, "--seed"),
    text_field: list[str] | None = TextField,
) -> None:
    """Add EDA-edited and/or model-paraphrased copies of each row; originals are kept and marked."""
    from lmopt.data.augment import augment
    from lmopt.data.config import AugmentConfig

    fields = {"methods": method, "per_row": per_row, "alpha": alpha, "seed": seed, "model": model,
              "text_field": _text_field(text_field)}
    cfg = AugmentConfig.parse(fields, where="lmopt data augment")
    result = augment(input, cfg, output=output)
    _console().print(f"augment: {result.rows_in} rows in, {result.rows_out} out; made {result.made}, "
                     f"dropped as copies {result.dropped}; wrote {output}")
    if result.bad_rows.get("total"):
        bad = result.bad_rows
        _console().print(f"[yellow]{bad['total']} bad rows skipped[/] (lines per reason: {bad['lines']})")


@data_app.command("stats")
def stats_cmd(
    input: Path = typer.Argument(..., help="Dataset (any format `lmopt data clean` reads)."),
    text_field: list[str] | None = TextField,
    json_out: Path | None = typer.Option(None, "--json", help="Write the statistics to this JSON file."),
) -> None:
    """Rows, bad rows (with line numbers), lengths, exact duplicates and PII found in INPUT."""
    from lmopt.data.stats import dataset_stats

    stats = dataset_stats(input, text_field=_text_field(text_field))
    console = _console()
    console.print_json(data=stats)
    if json_out:
        from lmopt.io import write_json

        write_json(json_out, stats)
