"""`lmopt monitor drift`, `lmopt improve` and `lmopt dashboard`: options generated from their typed configs.

Exit status: `monitor drift` 0 no alert, 1 some metric alerts; `improve` 0 promoted (or a dry run),
1 not promoted (the report says why); 2 bad input for all (an `LmoptError`, one line).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lmopt.cli.options import as_parameters, build_command, config_from_cli, config_options
from lmopt.io import write_json
from lmopt.monitor.config import DashboardConfig, ImproveConfig
from lmopt.monitor.drift import DriftConfig

KW = inspect.Parameter.KEYWORD_ONLY
TRAFFIC_HELP = "SQLAlchemy URL of the traffic store (default: $LMOPT_TRAFFIC, else SQLite in $LMOPT_HOME)."
REGISTRY_HELP = "SQLAlchemy URL of the registry (default: $LMOPT_REGISTRY, else SQLite in $LMOPT_HOME)."


def _option(name: str, default: Any, flag: str, annotation: Any, help: str) -> inspect.Parameter:
    return inspect.Parameter(name, KW, annotation=annotation, default=typer.Option(default, flag, help=help))


def _common(config_help: str) -> list[inspect.Parameter]:
    return [_option("config", None, "--config", Path | None, config_help),
            _option("set", None, "--set", list[str] | None, "Any config field, KEY=VALUE (dotted for nested)."),
            _option("json_out", None, "--json", Path | None, "Also write the result to this JSON file.")]


def run_recipe_map(data: dict[str, Any], base_dir: Path, log: Any, registry: Any = None) -> dict[str, Any]:
    """`improve`'s recipe runner: `lmopt.pipeline.run_recipe` on a recipe map, steps recorded in `registry`."""
    from lmopt.pipeline import Recipe, run_recipe  # lazy: the training stack, only when improve runs

    return run_recipe(Recipe.parse(data, where="improve recipe"), base_dir, registry, log=log)


# --- lmopt monitor drift ----------------------------------------------------------------------------


def drift_table(report: Any) -> Table:
    table = Table(title=f"drift: {report.current} ({report.n_current}) vs {report.reference} ({report.n_reference})")
    for col in ("metric", "value", "threshold", "alert", "reference", "current / note"):
        table.add_column(col)
    for m in report.metrics:
        value = "-" if m.value is None else f"{m.value:.4g}"
        shown = m.note or json.dumps(m.current)
        table.add_row(m.name, value, str(m.threshold), "[bold red]ALERT[/]" if m.alert else "",
                      json.dumps(m.reference) if m.reference is not None else "", shown)
    return table


def _drift_command() -> Any:
    reserved = {"reference", "current", "traffic", "model", "registry", "record", "json_out", "config", "set"}
    options = config_options(DriftConfig, {}, reserved)
    params = [
        _option("reference", ..., "--reference", str, "In-distribution window: a dataset file of prompts, or a "
                "traffic window (last:N, hours:H, days:D, range:START..END)."),
        _option("current", ..., "--current", str, "The window to check (same forms as --reference)."),
        _option("traffic", None, "--traffic", str | None, TRAFFIC_HELP),
        _option("model", None, "--model", str | None, "Served model: adds its loss on the prompts; with "
                "--tokens model, its tokenizer."),
        _option("registry", None, "--registry", str | None, REGISTRY_HELP),
        _option("record", False, "--record/--no-record", bool, "Store the report in the registry (dashboard)."),
        *_common("YAML map of DriftConfig fields."), *as_parameters(options, 1, {}),
    ]

    def body(values: dict[str, Any]) -> None:
        # lazy: sqlalchemy (traffic store) and torch (model), only when the command runs
        from lmopt.models import load_model
        from lmopt.monitor.drift import drift
        from lmopt.monitor.drift_windows import load_window, parse_window
        from lmopt.monitor.registry import Registry
        from lmopt.monitor.traffic import TrafficStore

        config = DriftConfig.parse(config_from_cli(values, options, values["config"], values["set"] or [],
                                                   DriftConfig), where="lmopt monitor drift")
        specs = (values["reference"], values["current"])
        needs_store = any(not isinstance(parse_window(s), Path) for s in specs)
        store = TrafficStore(values["traffic"]) if needs_store else None
        model = load_model(values["model"], dtype="float32") if values["model"] else None
        reference, current = (load_window(s, store) for s in specs)
        report = drift(reference, current, config, model=model)
        Console().print(drift_table(report))
        if values["record"]:
            Registry(values["registry"]).record(
                "drift", values["model"], {**report.values(), "alerts": [m.name for m in report.alerts]},
                task=report.reference, config={"report": report.to_dict()})
        if values["json_out"]:
            write_json(values["json_out"], report.to_dict())
        raise typer.Exit(1 if report.alerts else 0)

    return build_command("drift", "Compare a window of requests with a reference: prompt length, tokens (JS "
                         "divergence), script, language, model loss, outputs, feedback. Exit 1 on an alert.",
                         params, body)


# --- lmopt improve ----------------------------------------------------------------------------------


def _improve_command() -> Any:
    reserved = {"traffic", "registry", "dry_run", "json_out", "config", "set"}
    options = config_options(ImproveConfig, {}, reserved)
    params = [
        _option("traffic", None, "--traffic", str | None, TRAFFIC_HELP),
        _option("registry", None, "--registry", str | None, REGISTRY_HELP),
        _option("dry_run", False, "--dry-run", bool, "Print the plan (models, data, recipe); change nothing."),
        *_common("YAML map of ImproveConfig fields (e.g. src/lmopt/recipes/improve-pubmed.yaml)."),
        *as_parameters(options, 1, {}),
    ]

    def body(values: dict[str, Any]) -> None:
        # lazy: the gate and the training stack, only when the command runs
        from lmopt.hardware import apply_threads
        from lmopt.monitor.improve import improve
        from lmopt.monitor.registry import Registry
        from lmopt.monitor.traffic import TrafficStore

        config = ImproveConfig.parse(config_from_cli(values, options, values["config"], values["set"] or [],
                                                     ImproveConfig), where="lmopt improve")
        console, err = Console(), Console(stderr=True)
        apply_threads()
        report = improve(config, run=run_recipe_map, registry=Registry(values["registry"]),
                         traffic=TrafficStore(values["traffic"]), dry_run=values["dry_run"],
                         log=lambda message: err.print(f"[dim]{message}[/]"))
        console.print(_plan_table(report))
        if values["json_out"]:
            write_json(values["json_out"], report.to_dict())
        raise typer.Exit(0 if report.promoted or report.dry_run else 1)

    return build_command("improve", "Fine-tune production on its users' feedback, replay its compression, gate "
                         "against production, promote on a pass. Exit 0 promoted (or dry run), 1 not.",
                         params, body)


def _plan_table(report: Any) -> Table:
    plan = report.plan
    table = Table(title="lmopt improve" + (" (dry run)" if report.dry_run else ""))
    table.add_column("")
    table.add_column("")
    table.add_row("production", f"{plan.production['hash']} {plan.production['path']}")
    table.add_row("float source", f"{plan.float_source['hash']} {plan.float_source['path']}")
    table.add_row("feedback", ", ".join(f"{k} {v}" for k, v in plan.feedback.items()))
    for i, step in enumerate(plan.recipe["steps"]):
        ((name, config),) = step.items()
        shown = {k: v for k, v in config.items() if k in ("method", "bits", "group_size", "lr", "epochs",
                                                         "decontaminate", "sparsity")}
        table.add_row(f"step {i + 1}", f"{name} {json.dumps(shown)}")
    table.add_row("gate", f"suite '{plan.suite}' against @{plan.alias}")
    if report.gate:
        table.add_row("gate result", "pass" if report.gate["passed"] else "FAIL: " + ", ".join(report.gate["failed"]))
    if report.candidate:
        table.add_row("candidate", f"{report.candidate['hash']} {report.candidate['path']}")
    table.add_row("promoted", "yes" if report.promoted else "no")
    table.add_row("reason", report.reason)
    return table


# --- lmopt dashboard --------------------------------------------------------------------------------


def _dashboard_command() -> Any:
    options = config_options(DashboardConfig, {}, {"config", "set", "json_out"})
    params = [_option("config", None, "--config", Path | None, "YAML map of DashboardConfig fields."),
              *as_parameters(options, 1, {})]

    def body(values: dict[str, Any]) -> None:
        from lmopt.monitor.dashboard import serve_dashboard  # lazy: fastapi, matplotlib

        config = DashboardConfig.parse(config_from_cli(values, options, values["config"], [], DashboardConfig),
                                       where="lmopt dashboard")
        serve_dashboard(config, log=Console().print)

    return build_command("dashboard", "Serve a local page: models, lineage, aliases, trends, gates, live "
                         "serving, drift, feedback.", params, body)


def register(app: typer.Typer) -> None:
    """Add `monitor drift`, `improve` and `dashboard` to the lmopt app."""
    monitor_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                              help="Watch served traffic: drift against a reference.")
    monitor_app.command("drift")(_drift_command())
    app.add_typer(monitor_app, name="monitor")
    app.command("improve")(_improve_command())
    app.command("dashboard")(_dashboard_command())
