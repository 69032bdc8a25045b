"""CLI verbs of the model registry and the regression gate: `lmopt models ...` and `lmopt check`.

`register(app)` adds `models list|show|register|promote|rollback|history|diff` (a sub-app) and
`check`. Exit status of `check`: 0 pass, 1 regression, 2 bad input (an `LmoptError`, printed as one
line by `lmopt.cli.main`).
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lmopt.hardware import apply_threads
from lmopt.io import write_json
from lmopt.monitor import (
    Registry,
    alias_history,
    aliases,
    diff_models,
    enable_alias_references,
    get_model,
    lineage,
    list_models,
    promote,
    register_model,
    rollback,
)
from lmopt.monitor.gate import check
from lmopt.monitor.gate_report import GateReport, compared_text, write_reports
from lmopt.report import models_table, runs_table

RegistryOpt = typer.Option(None, "--registry", help="SQLAlchemy URL of the registry (default: "
                           "$LMOPT_REGISTRY, else SQLite in $LMOPT_HOME).")
JsonOpt = typer.Option(None, "--json", help="Also write the result to this JSON file.")
AliasArg = typer.Argument("production", help="Alias name (with or without '@').")


def _when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    return table


def _open(url: str | None) -> Registry:
    registry = Registry(url)
    enable_alias_references(registry.url)  # `@alias` in this command resolves through this registry
    return registry


def list_cmd(registry: str | None = RegistryOpt) -> None:
    """The embedded model and cached models, then the registered models and the aliases."""
    reg, console = _open(registry), Console()
    console.print(models_table())
    table = _table("registered models", ["hash", "name", "aliases", "step", "parent", "registered", "path"])
    for m in list_models(reg):
        table.add_row(m.hash, str(m.name or ""), " ".join(f"@{a}" for a in m.aliases), str(m.step or ""),
                      str(m.parent_hash or ""), _when(m.registered), str(m.path or ""))
    console.print(table)
    history = {e.alias: e for e in alias_history(None, reg)}
    table = _table("aliases", ["alias", "model", "since", "by", "last action"])
    for name, digest in aliases(reg).items():
        last = history[name]
        table.add_row(f"@{name}", digest, _when(last.time), str(last.user or ""), last.action)
    console.print(table)


def show_cmd(model: str = typer.Argument(..., help="@alias, model hash (prefix) or local model directory."),
             registry: str | None = RegistryOpt, json_out: Path | None = JsonOpt) -> None:
    """A model's record: lineage, config, figures, recent runs (and an alias's history)."""
    reg, console = _open(registry), Console()
    record = get_model(model, reg)
    chain = lineage(record.hash, reg)
    runs = reg.query(model_hash=record.hash, limit=20)
    history = alias_history(model, reg) if model.startswith("@") else []
    console.print_json(data={**record.to_dict(), "lineage_chain": [[r.hash, r.step, r.name] for r in chain]},
                       default=str)
    if runs:
        console.print(runs_table(runs))
    if history:
        _print_history(console, history)
    _emit({"model": record.to_dict(), "lineage": [r.to_dict() for r in chain], "runs": runs,
           "alias_history": [vars(e) for e in history]}, json_out, console)


def register_cmd(model: str = typer.Argument(..., help="Local model directory (or an alias like the "
                                             "embedded smollm2-135m-instruct)."),
                 name: str | None = typer.Option(None, "--name", help="A short human name."),
                 registry: str | None = RegistryOpt) -> None:
    """Register a model (content hash, lineage from its card, figures); its local parents too."""
    record = register_model(model, _open(registry), name=name)
    Console().print(f"registered {record.hash} ({record.name}) at {record.path}")


def promote_cmd(model: str = typer.Argument(..., help="Model to promote: directory, hash or @alias."),
                alias: str = typer.Option("production", "--alias", "-a", help="Alias to point at it."),
                reason: str | None = typer.Option(None, "--reason", help="Why (kept in the history)."),
                registry: str | None = RegistryOpt) -> None:
    """Point an alias at a model (registering it first); the previous target stays in the history."""
    event = promote(model, alias, _open(registry), reason=reason)
    Console().print(f"@{event.alias} -> {event.model_hash} (was {event.previous_hash or 'unset'}), "
                    f"by {event.user}")


def rollback_cmd(alias: str = AliasArg, reason: str | None = typer.Option(None, "--reason"),
                 registry: str | None = RegistryOpt) -> None:
    """Move an alias back to the target it had before its latest promotion."""
    event = rollback(alias, _open(registry), reason=reason)
    Console().print(f"@{event.alias} -> {event.model_hash} (rolled back from {event.previous_hash}), "
                    f"by {event.user}")


def _print_history(console: Console, events: list[Any]) -> None:
    table = _table("alias history", ["when", "alias", "action", "to", "from", "by", "reason"])
    for e in events:
        table.add_row(_when(e.time), f"@{e.alias}", e.action, str(e.model_hash or ""),
                      str(e.previous_hash or ""), str(e.user or ""), str(e.reason or ""))
    console.print(table)


def history_cmd(alias: str | None = typer.Argument(None, help="One alias (default: all)."),
                registry: str | None = RegistryOpt) -> None:
    """Every promotion and rollback: who, when, from which model to which."""
    _print_history(Console(), alias_history(alias, _open(registry)))


def diff_cmd(a: str = typer.Argument(..., help="First model (directory, hash or @alias)."),
             b: str = typer.Argument(..., help="Second model."),
             registry: str | None = RegistryOpt, json_out: Path | None = JsonOpt) -> None:
    """How two models differ: lineage since their common ancestor, config, data, figures."""
    diff, console = diff_models(a, b, _open(registry)), Console()
    console.print(f"a = {diff.a['hash']} ({diff.a['name']}), b = {diff.b['hash']} ({diff.b['name']}), "
                  f"common ancestor: {diff.common_ancestor or 'none registered'}")
    for title, side in (("steps since the common ancestor: a", diff.a_steps),
                        ("steps since the common ancestor: b", diff.b_steps)):
        if side:
            table = _table(title, ["hash", "step", "config"])
            for s in side:
                table.add_row(s["hash"], str(s["step"] or ""), json.dumps(s["config"], default=str)[:120])
            console.print(table)
    for title, changed in (("fields", diff.fields), ("config", diff.config), ("data", diff.data)):
        if changed:
            table = _table(title, ["key", "a", "b"])
            for key, (va, vb) in changed.items():
                table.add_row(key, str(va), str(vb))
            console.print(table)
    if diff.figures:
        table = _table("figures", ["figure", "a", "b", "b - a"])
        for key, f in diff.figures.items():
            table.add_row(key, str(f["a"]), str(f["b"]), "" if f["delta"] is None else f"{f['delta']:+.4g}")
        console.print(table)
    _emit(diff.to_dict(), json_out, console)


def _emit(data: dict[str, Any], path: Path | None, console: Console) -> None:
    if path is not None:
        write_json(path, data)
        console.print(f"wrote {path}")


def gate_table(report: GateReport) -> Table:
    table = _table(f"gate {report.suite}: {'PASS' if report.passed else 'FAIL'}",
                   ["metric", "baseline", "candidate", "change [interval]", "allowed", "n", "verdict"])
    styles = {"pass": "green", "inconclusive": "yellow", "fail": "bold red"}
    for m in report.metrics:
        change, allowed = compared_text(m)
        table.add_row(m.name, f"{m.baseline:.4g}", f"{m.candidate:.4g}", change, allowed, f"{m.n} {m.unit}",
                      f"[{styles[m.verdict]}]{m.verdict}[/]")
    return table


def check_cmd(
    candidate: str = typer.Argument(..., help="Candidate model: directory, .gguf, alias or @alias."),
    baseline: str = typer.Option("@production", "--baseline", "-b", help="Model to compare against."),
    suite: str = typer.Option("quick", "--suite", "-s", help="Suite YAML ('quick': the bundled one)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write the report as Markdown."),
    html_out: Path | None = typer.Option(None, "--html", help="Write the report as HTML with plots."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Evaluation data dir (shared/data layout)."),
    registry: str | None = RegistryOpt,
) -> None:
    """Regression gate: measure CANDIDATE and the baseline on a suite; exit 0 pass, 1 regression, 2 bad input."""
    console, started = Console(stderr=True), time.time()
    apply_threads()
    report = check(candidate, baseline, suite, registry=_open(registry), data_dir=data_dir,
                   log=lambda message: console.print(f"[dim]{time.time() - started:6.1f}s {message}[/]"))
    Console().print(gate_table(report))
    for path in write_reports(report, json_path=json_out, markdown_path=markdown_out, html_path=html_out):
        console.print(f"wrote {path}")
    raise typer.Exit(0 if report.passed else 1)


def register(app: typer.Typer) -> None:
    """Add `models ...` and `check` to the lmopt app."""
    models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                             help="Registered models, their lineage, and aliases such as @production.")
    models_app.command("list")(list_cmd)
    models_app.command("show")(show_cmd)
    models_app.command("register")(register_cmd)
    models_app.command("promote")(promote_cmd)
    models_app.command("rollback")(rollback_cmd)
    models_app.command("history")(history_cmd)
    models_app.command("diff")(diff_cmd)
    app.add_typer(models_app, name="models")
    app.command("check")(check_cmd)
