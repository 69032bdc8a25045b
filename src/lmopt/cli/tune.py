"""`lmopt tune RECIPE --space SPACE.yaml --trials N`: search the training step of a recipe.

Options are generated from `TuneConfig`. Workers on other machines join the same study by running the
same command with the same `--storage` URL (PostgreSQL) and `--study-name`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lmopt.cli.options import as_parameters, build_command, config_from_cli, config_options
from lmopt.io import write_json
from lmopt.monitor import Registry
from lmopt.tune.config import TuneConfig


def _summary_table(result: Any) -> Table:
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


def _tune_command() -> Any:
    aliases = {"trials": "n_trials", "study": "study_name", "objective": "objectives", "direction": "directions"}
    reserved = {"recipe", "space", "registry", "json_out", "config", "set"}
    options = config_options(TuneConfig, aliases, reserved)
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("recipe", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                          default=typer.Argument(..., help="Recipe YAML with a finetune or distill step.")),
        inspect.Parameter("space", kw, annotation=Path,
                          default=typer.Option(..., "--space", help="Search space YAML (field -> distribution).")),
        inspect.Parameter("config", kw, annotation=Path | None,
                          default=typer.Option(None, "--config", help="YAML map of TuneConfig fields.")),
        inspect.Parameter("set", kw, annotation=list[str] | None,
                          default=typer.Option(None, "--set", help="Any TuneConfig field, KEY=VALUE.")),
        inspect.Parameter("registry", kw, annotation=str | None,
                          default=typer.Option(None, "--registry", help="SQLAlchemy URL of the run registry.")),
        inspect.Parameter("json_out", kw, annotation=Path | None,
                          default=typer.Option(None, "--json", help="Write the results to this JSON file.")),
        *as_parameters(options, 1, {}),
    ]

    def body(values: dict[str, Any]) -> None:
        from lmopt.tune.tuner import tune  # lazy: optuna + torch; `lmopt --help` stays fast

        fields = config_from_cli(values, options, values["config"], values["set"] or [], TuneConfig)
        config = TuneConfig.parse(fields, where="lmopt tune")
        console = Console()
        result = tune(values["recipe"], values["space"], config, registry=Registry(values["registry"]),
                      log=console.print)
        console.print(_summary_table(result))
        if values["json_out"]:
            write_json(values["json_out"], result.to_dict())

    return build_command("tune", "Tune a recipe's training step with Optuna (pruning, resume, parallel "
                         "workers).", params, body)


def register(app: typer.Typer) -> None:
    app.command("tune")(_tune_command())
