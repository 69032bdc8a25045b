"""`lmopt tune RECIPE --space SPACE.yaml --trials N`: search the training step of a recipe.

Workers on other machines join the same study by running the same command with the same `--storage`
URL (PostgreSQL) and `--study` name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _console() -> Any:
    from rich.console import Console

    return Console()


def _summary_table(result: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"study {result.study_name}")
    table.add_column("field")
    table.add_column("value")
    table.add_row("trials", ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items())))
    for name, value in zip(result.objectives, result.best_values, strict=False):
        table.add_row(f"best {name}", f"{value:.5g}")
    table.add_row("best trial", str(result.best_trial))
    for name, value in result.best_params.items():
        table.add_row(f"  {name}", f"{value:.4g}" if isinstance(value, float) else str(value))
    for point in result.pareto:
        table.add_row(f"pareto #{point['number']}", ", ".join(f"{v:.4g}" for v in point["values"]))
    table.add_row("best model", str(result.best_model or "-"))
    table.add_row("report", str(result.output / "report.md"))
    return table


def register(app: typer.Typer) -> None:
    @app.command("tune")
    def tune_cmd(
        recipe: Path = typer.Argument(..., help="Recipe YAML with a finetune or distill step."),
        space: Path = typer.Option(..., "--space", help="Search space YAML (field -> distribution)."),
        trials: int | None = typer.Option(None, "--trials", help="Trials in the study in total."),
        timeout: float | None = typer.Option(None, "--timeout", help="Wall-clock seconds for this run."),
        workers: int | None = typer.Option(None, "--workers", help="Local worker processes."),
        storage: str | None = typer.Option(None, "--storage", help="Optuna storage URL (default SQLite)."),
        study: str | None = typer.Option(None, "--study", help="Study name (to join from other machines)."),
        pruner: str | None = typer.Option(None, "--pruner", help="none, median or hyperband."),
        sampler: str | None = typer.Option(None, "--sampler", help="tpe or random."),
        objective: list[str] | None = typer.Option(None, "--objective",
                                                   help="Metric (repeat it: multi-objective)."),
        direction: list[str] | None = typer.Option(None, "--direction",
                                                   help="minimize or maximize, per objective."),
        seed: int | None = typer.Option(None, "--seed"),
        output: Path | None = typer.Option(None, "--output", help="Where the best model and report go."),
        registry: str | None = typer.Option(None, "--registry", help="SQLAlchemy URL of the run registry."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the results to this JSON file."),
    ) -> None:
        """Tune a recipe's training step with Optuna (pruning, resume, parallel workers)."""
        from lmopt.tune.config import TuneConfig
        from lmopt.tune.tuner import tune

        given = {"n_trials": trials, "timeout": timeout, "workers": workers, "storage": storage,
                 "study_name": study, "pruner": pruner, "sampler": sampler, "objectives": objective or None,
                 "directions": direction or None, "seed": seed, "output": str(output) if output else None}
        config = TuneConfig.parse({k: v for k, v in given.items() if v is not None}, where="lmopt tune")
        reg = None
        if registry:
            from lmopt.monitor import Registry

            reg = Registry(registry)
        console = _console()
        result = tune(recipe, space, config, registry=reg, log=console.print)
        console.print(_summary_table(result))
        if json_out:
            from lmopt.io import write_json

            write_json(json_out, result.to_dict())
