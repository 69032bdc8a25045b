"""`lmopt plan MODEL --hardware NAME` and `lmopt select --task-type T --candidate ... --data FILE`.

Options are generated from `PlanConfig` and `SelectConfig` (`lmopt.cli.options`); `--config FILE.yaml`
and `--set KEY=VALUE` reach every field. Bad input (an unknown hardware name or metric, a constraint that
cannot parse or never holds, a candidate that cannot do the task type) ends with one line, exit 2.
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
from lmopt.select.hardware_table import THIS_MACHINE, get_target
from lmopt.select.plan import PlanConfig
from lmopt.select.selection_config import SelectConfig

KW = inspect.Parameter.KEYWORD_ONLY


def _common(config_help: str) -> list[inspect.Parameter]:
    return [
        inspect.Parameter("config", KW, annotation=Path | None,
                          default=typer.Option(None, "--config", help=config_help)),
        inspect.Parameter("set", KW, annotation=list[str] | None,
                          default=typer.Option(None, "--set", help="Any config field, KEY=VALUE (repeatable).")),
        inspect.Parameter("json_out", KW, annotation=Path | None,
                          default=typer.Option(None, "--json", help="Write the result to this JSON file.")),
    ]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


PLAN_FIGURES = {
    "total_gb": "memory GB (weights + KV + activations)", "usable_gb": "usable memory GB", "fits": "fits",
    "prefill_tok_s": "prefill tok/s (roofline)", "decode_tok_s": "decode tok/s (roofline)",
    "decode_tok_s_calibrated": "decode tok/s (calibrated here)", "measured_decode_tok_s": "measured decode tok/s",
    "estimate_at_measured": "estimate at the measurement", "error_pct": "estimate error %",
    "roofline_error_pct": "roofline error %", "cost_per_m_input": "USD / M input tokens",
    "cost_per_m_output": "USD / M output tokens",
}
"""PlanRow field -> row label of the table (a figure no format has is left out)."""


def plan_table(result: Any) -> Table:
    """One column per format and one row per figure: four formats fit an 80-column terminal, where a
    column per figure (up to 12) did not."""
    target = result.target
    table = Table(title=f"{result.model['name']} on {target['name']} (context {result.context}, batch "
                        f"{result.batch}; {target['bandwidth_gbs']} GB/s, {target['bf16_tflops']} bf16 TFLOPS, "
                        f"{target['memory_gb']} GB)")
    rows = [r.__dict__ for r in result.rows]
    table.add_column("")
    for row in rows:
        table.add_column(row["format"], justify="right")
    for field, label in PLAN_FIGURES.items():
        if any(row.get(field) is not None for row in rows):
            table.add_row(label, *[_fmt(row.get(field)) for row in rows])
    return table


def _plan_command() -> Any:
    reserved = {"model", "config", "set", "json_out"}
    options = config_options(PlanConfig, {}, reserved)
    params = [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                          default=typer.Argument(..., help="Alias, .gguf file or model directory.")),
        *_common("YAML map of PlanConfig fields."),
        *as_parameters(options, 1, {}),
    ]

    def body(values: dict[str, Any]) -> None:
        fields = config_from_cli(values, options, values["config"], values["set"] or [], PlanConfig)
        config = PlanConfig.parse(fields, where="lmopt plan")
        if config.hardware.strip().lower() != THIS_MACHINE:
            get_target(config.hardware)  # an unknown name fails before the model loads
        from lmopt.select.plan import plan  # lazy: the measurement imports torch; `lmopt --help` stays fast

        result = plan(values["model"], config=config)
        console = Console()
        console.print(plan_table(result))
        console.print(f"recommended format: {result.recommended or 'none fits'}; fastest that fits: "
                      f"{result.fastest or '-'}")
        for note in result.notes:
            console.print(f"- {note}")
        if values["json_out"]:
            write_json(values["json_out"], result.to_dict())

    return build_command("plan", "Does MODEL fit on the hardware, how fast (roofline; measured on this "
                         "machine), at what cost per million tokens, in which format.", params, body)


def _select_command() -> Any:
    reserved = {"config", "set", "json_out", "candidates"}
    options = config_options(SelectConfig, {"candidate": "candidates"}, reserved)
    params = [*_common("YAML map of SelectConfig fields."), *as_parameters(options, 1, {})]

    def body(values: dict[str, Any]) -> None:
        fields = config_from_cli(values, options, values["config"], values["set"] or [], SelectConfig)
        config = SelectConfig.parse(fields, where="lmopt select")
        from lmopt.select.selection import select  # lazy: torch and transformers; `lmopt --help` stays fast

        console = Console()
        result = select(config=config, log=console.print)
        console.print(result.markdown())
        if values["json_out"]:
            write_json(values["json_out"], result.to_dict())

    return build_command("select", "Measure candidate models (encoder, decoder, encoder-decoder; each way of "
                         "adapting) on your data and recommend one under your constraints.", params, body)


def register(app: typer.Typer) -> None:
    app.command("plan")(_plan_command())
    app.command("select")(_select_command())
