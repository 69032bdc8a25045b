"""`lmopt quantize MODEL --method gptq --bits 4 --group-size 128 --output DIR` (a one-step recipe)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the `quantize` verb to the lmopt CLI."""

    @app.command("quantize")
    def quantize_cmd(
        model: str = typer.Argument(..., help="Alias, .gguf file, HF directory or hub id."),
        method: str = typer.Option("gptq", "--method", help="rtn, gptq, awq or w8a8."),
        bits: int | None = typer.Option(None, "--bits", help="Weight bits: 8, 4 or 3 (default 4; w8a8: 8)."),
        group_size: int | None = typer.Option(None, "--group-size", help="32, 64, 128...; 0 = per channel."),
        sym: bool = typer.Option(False, "--sym", help="Symmetric grid."),
        lm_head_bits: int = typer.Option(8, "--lm-head-bits", help="lm_head bits; 0 keeps it unquantized."),
        calib: str = typer.Option("pydoc-train", "--calib", help="Calibration text: source or file."),
        n_samples: int = typer.Option(128, "--n-samples", help="Calibration windows."),
        seq_len: int = typer.Option(512, "--seq-len", help="Tokens per calibration window."),
        export_hf: bool = typer.Option(False, "--export-hf", help="Write the de-quantized plain HF model."),
        output: Path = typer.Option(..., "--output", "-o", help="Directory of the quantized model."),
        data_dir: Path | None = typer.Option(None, "--data-dir", help="Data dir (for --calib wikitext2)."),
        registry: str | None = typer.Option(None, "--registry", help="SQLAlchemy URL of the run registry."),
    ) -> None:
        """Quantize a model (RTN, GPTQ, AWQ, W8A8) into packed low-bit weights, with progress per layer."""
        from rich.console import Console

        from lmopt.cli import open_registry
        from lmopt.pipeline import one_step_recipe, run_recipe

        config: dict = {"method": method, "lm_head_bits": lm_head_bits or None, "export_hf": export_hf,
                        "calibration": {"source": calib, "n_samples": n_samples, "seq_len": seq_len}}
        config.update({k: v for k, v in {"bits": bits, "group_size": group_size}.items() if v is not None})
        if sym:
            config["sym"] = True
        recipe = one_step_recipe("quantize", config, model, output=str(output.resolve()),
                                 data_dir=str(data_dir) if data_dir else None)
        console = Console()
        summary = run_recipe(recipe, Path.cwd(), registry=open_registry(registry), log=console.print)
        metrics = summary["steps"][0]["metrics"]
        console.print(f"wrote {summary['output']}: {metrics['size_on_disk_mb']} MB on disk, "
                      f"{metrics['quantize_seconds']} s, peak RSS {metrics['peak_rss_mb']} MB")
