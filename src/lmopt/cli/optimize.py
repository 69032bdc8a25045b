"""`lmopt optimize MODEL [MODEL...] --objective ... --constraint ... --budget-min N --output DIR`.

Options are generated from `OptimizeConfig` (nested fields such as `cheap.limit` or `space.group_sizes`
through `--set`); a few space fields get flags of their own. Rerunning the same command on the same
`--output` resumes the search.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from lmopt.cli.options import as_parameters, build_command, config_from_cli, config_options
from lmopt.io import write_json
from lmopt.select.optimize_config import OptimizeConfig

ALIASES = {"constraint": "constraints", "trials": "n_trials", "quantize": "space.quantize", "prune": "space.prune",
           "bits": "space.bits", "dtypes": "space.dtypes", "threads": "space.threads"}


def _optimize_command() -> Any:
    reserved = {"models", "constraints", "n_trials", "config", "set", "json_out"}
    options = config_options(OptimizeConfig, ALIASES, reserved)
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("models", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=list[str],
                          default=typer.Argument(..., help="Candidate base models (alias, .gguf, directory).")),
        inspect.Parameter("config", kw, annotation=Path | None,
                          default=typer.Option(None, "--config", help="YAML map of OptimizeConfig fields.")),
        inspect.Parameter("set", kw, annotation=list[str] | None,
                          default=typer.Option(None, "--set", help="Any field, KEY=VALUE (cheap.limit=2).")),
        inspect.Parameter("json_out", kw, annotation=Path | None,
                          default=typer.Option(None, "--json", help="Write the result to this JSON file.")),
        *as_parameters(options, 1, {}),
    ]

    def body(values: dict[str, Any]) -> None:
        fields = config_from_cli(values, options, values["config"], values["set"] or [], OptimizeConfig)
        fields["models"] = list(values["models"])
        config = OptimizeConfig.parse(fields, where="lmopt optimize")
        # lazy: optuna, matplotlib and torch; `lmopt --help` stays fast
        from lmopt.select.optimize import optimize
        from lmopt.select.optimize_outputs import front_table

        console = Console()
        result = optimize(config, log=lambda line: console.print(line, markup=False, highlight=False))
        console.print(front_table(config, result.state))
        best = result.best
        if best is not None:
            verdict = "meets every constraint" if best["feasible"] else "closest to the constraints; none meets all"
            console.print(f"best: trial {best['number']} ({best['label']}), {verdict}: {result.best_model}",
                          markup=False)
        console.print(f"report: {result.output / 'report.md'} (stopped by {result.stopped}, "
                      f"{result.spent_s / 60:.1f} min used)", markup=False)
        if values["json_out"]:
            write_json(values["json_out"], result.to_dict())

    return build_command("optimize", "Search fine-tuning, pruning, quantization, dtype and threads for the best "
                         "model under constraints, measured on this machine (resumable).", params, body)


def register(app: typer.Typer) -> None:
    app.command("optimize")(_optimize_command())
