"""The verbs that run one step: each is a one-step recipe, its options generated from the step's config.

`VERBS` is the table: the verb, the step it runs, how the input is given and a few aliases for nested
fields. `run_verb` is the one helper every verb goes through: build the recipe, run it (cached,
recorded in the registry), print, copy the result to `--output`, write `--json`.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from lmopt.cli.options import FieldOption, as_parameters, build_command, config_from_cli, config_options
from lmopt.cli.views import kernel_table
from lmopt.compress.prune.config import PruneStepConfig
from lmopt.compress.quantize.config import QuantizeStepConfig, RotateConfig
from lmopt.configs import parse_config, union_members
from lmopt.data.config import AugmentConfig, CleanConfig
from lmopt.evaluate.config import BenchConfig, EvaluateConfig
from lmopt.export.config import ExportConfig
from lmopt.io import write_json
from lmopt.monitor import Registry, enable_alias_references
from lmopt.pipeline import one_step_recipe, run_recipe
from lmopt.report import results_table, speed_table
from lmopt.train.config import DistillStepConfig, FinetuneStepConfig

COMMON = {"output", "config", "set", "data_dir", "dtype", "registry", "json_out", "eval", "eval_limit", "workdir"}
"""Parameter names of the options every verb has; a config field of the same name takes `--set`."""
INPUTS = {"model": "model", "teacher": "teacher", "dataset": "input"}
"""The parameter name of each kind of input (a config field named like the verb's input takes `--set`)."""


@dataclass(frozen=True)
class Verb:
    """A CLI verb that runs one step."""

    name: str
    step: str
    config: Any
    """The step's config type (a test checks it is the registered step's)."""
    input: Literal["model", "teacher", "dataset"] = "model"
    """How the input is given: a MODEL argument, a --teacher option, or an INPUT dataset argument."""
    output: Literal["model", "dataset", "none"] = "model"
    aliases: dict[str, str] = field(default_factory=dict)
    """Extra flag name -> nested field path (`n-samples` -> `calibration.n_samples`)."""
    switches: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    """Flag name -> (fields it sets, help): `lora` -> ({"method": "lora"}, "...")."""
    short: dict[str, str] = field(default_factory=dict)
    show: Callable[[dict[str, Any], Console], None] | None = None


def _show_metrics(summary: dict[str, Any], console: Console) -> None:
    steps = [s for s in summary["steps"] if s["step"] != "evaluate"]
    if steps:
        table = Table(title=steps[-1]["step"])
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in steps[-1]["metrics"].items():
            if key not in ("history", "block_influence", "layers"):
                table.add_row(key, str(value))
        console.print(table)
    for ref, results in summary.get("evaluation", {}).items():
        console.print(results_table({"model": ref, **results}))


def _show_speed(summary: dict[str, Any], console: Console) -> None:
    figures = summary["steps"][-1]["metrics"]
    console.print(speed_table(figures["speed"]))
    console.print(kernel_table(figures["kernels"]))


def _show_clean(summary: dict[str, Any], console: Console) -> None:
    figures = summary["steps"][-1]["metrics"]
    table = Table(title=f"clean: {figures['rows_in']} rows in, {figures['rows_out']} out")
    for col in ("filter", "in", "removed", "out"):
        table.add_column(col, justify="left" if col == "filter" else "right")
    for stage in figures["filters"]:
        table.add_row(stage["filter"], str(stage["in"]), str(stage["removed"]), str(stage["out"]))
    console.print(table)
    if figures["pii"]:
        console.print("PII replaced: " + ", ".join(f"{k} {v}" for k, v in sorted(figures["pii"].items())))
    if figures["bad_rows"]:
        console.print(f"[yellow]{figures['bad_rows']} bad rows skipped[/] (line numbers in the report)")


def _show_augment(summary: dict[str, Any], console: Console) -> None:
    figures = summary["steps"][-1]["metrics"]
    console.print(f"augment: {figures['rows_in']} rows in, {figures['rows_out']} out; made {figures['made']}, "
                  f"dropped as copies {figures['dropped']}")


CALIBRATION = {"calib": "calibration.source", "n-samples": "calibration.n_samples",
               "calib-seq-len": "calibration.seq_len"}
VERBS = [
    Verb("eval", "evaluate", EvaluateConfig, output="none", aliases={"task": "tasks"}, short={"task": "-t"}),
    Verb("bench", "bench", BenchConfig, output="none", show=_show_speed),
    Verb("quantize", "quantize", QuantizeStepConfig, aliases=CALIBRATION, short={"method": "-m"}),
    Verb("rotate", "rotate", RotateConfig),
    Verb("prune", "prune", PruneStepConfig, short={"method": "-m"},
         aliases={**CALIBRATION, "recover-minutes": "recover.distill.max_minutes", "recover-data": "recover.data"}),
    Verb("train", "finetune", FinetuneStepConfig,
         switches={"lora": ({"method": "lora"}, "Train LoRA adapters (= --method lora; merged on save)."),
                   "bf16": ({"mixed_precision": "bf16"}, "bf16 autocast (= --mixed-precision bf16).")}),
    Verb("distill", "distill", DistillStepConfig, input="teacher",
         switches={"bf16": ({"mixed_precision": "bf16"}, "bf16 autocast (= --mixed-precision bf16).")}),
    Verb("clean", "clean", CleanConfig, input="dataset", output="dataset",
         aliases={"dedup": "dedup.mode", "threshold": "dedup.threshold", "min-words": "quality.min_words",
                  "language": "quality.language"},
         switches={"pii": ({"pii.enabled": True}, "Replace e-mails, phones, IPs, cards, keys by placeholders."),
                   "no-quality": ({"quality.enabled": False}, "Skip the quality rules.")},
         show=_show_clean),
    Verb("export", "export", ExportConfig, output="none", short={"output": "-o"}),
    Verb("augment", "augment", AugmentConfig, input="dataset", output="dataset", aliases={"method": "methods"},
         short={"method": "-m"}, show=_show_augment),
]


def run_verb(verb: Verb, inputs: dict[str, Any], config: dict[str, Any], common: dict[str, Any],
             console: Console | None = None) -> dict[str, Any]:
    """Run `verb` as a one-step recipe; print, copy the result to --output, record, write --json."""
    console = console or Console()
    fields: dict[str, Any] = {"data_dir": _str(common.get("data_dir")), "dtype": common.get("dtype") or "auto",
                              "workdir": _str(common.get("workdir"))}
    output = common.get("output")
    if verb.output == "model" and output is not None:
        fields["output"] = str(Path(output).resolve())
    if common.get("eval"):
        fields["evaluate"] = {"tasks": common["eval"], "limit": common.get("eval_limit"), "baseline": True}
    model = inputs.get("model") or inputs.get("teacher")
    if verb.input == "dataset":
        source = str(inputs["input"])  # a hub dataset (hf:NAME) is a name, not a path to resolve
        fields["data"] = source if source.startswith("hf:") else str(Path(source).resolve())
    recipe = one_step_recipe(verb.step, config, model, **fields)
    registry = Registry(common.get("registry"))
    enable_alias_references(registry.url)  # `@production` resolves in the registry this command records to
    summary = run_recipe(recipe, Path.cwd(), registry=registry, log=console.print)
    if verb.output == "dataset" and output is not None:
        summary["output"] = _copy_dataset(summary, Path(output))
    (verb.show or _show_metrics)(summary, console)
    if verb.output != "none":
        console.print(f"wrote {summary['output']}")
    if common.get("json_out"):
        write_json(common["json_out"], summary)
        console.print(f"wrote {common['json_out']}")
    return summary


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None


def _copy_dataset(summary: dict[str, Any], output: Path) -> str:
    """The final dataset (and the step's report dir and removed rows, if any) copied next to --output:
    `clean.jsonl`, `clean.jsonl.report/`, `clean.removed.jsonl`."""
    data = next(Path(s["data"]) for s in reversed(summary["steps"]) if s["data"])
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data, output)
    removed = data.parent / "removed.jsonl"
    if removed.is_file():
        shutil.copyfile(removed, output.with_name(output.stem + ".removed.jsonl"))
    report = data.parent / "report"
    if report.is_dir():
        dest = output.with_name(output.name + ".report")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(report, dest)
    return str(output)


def _common_parameters(verb: Verb) -> list[inspect.Parameter]:
    def opt(name: str, default: Any, *decls: str, annotation: Any, help: str) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                 default=typer.Option(default, *decls, help=help))

    first = {
        "model": inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                                   default=typer.Argument(..., help="Alias, .gguf file, HF directory or hub id.")),
        "teacher": opt("teacher", ..., "--teacher", annotation=str, help="The teacher model reference."),
        "dataset": inspect.Parameter("input", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                                     default=typer.Argument(..., help="Dataset: .txt/.jsonl/.json/.csv/.parquet"
                                                            "(.gz), a saved HF dataset or hf:NAME.")),
    }[verb.input]
    params = [first]
    if verb.output != "none":
        params.append(opt("output", ..., "--output", "-o", annotation=Path,
                          help="Where the result goes (a model directory or a .jsonl file)."))
    params += [
        opt("config", None, "--config", annotation=Path | None, help="YAML map of config fields; flags override."),
        opt("set", None, "--set", annotation=list[str] | None,
            help="Any config field, KEY=VALUE, dotted for nested fields (repeatable)."),
        opt("data_dir", None, "--data-dir", annotation=Path | None, help="Evaluation data dir (shared/data)."),
        opt("dtype", "auto", "--dtype", annotation=str, help="auto (bf16 where the CPU has it), float32, bfloat16."),
        opt("workdir", None, "--workdir", annotation=Path | None, help="Step cache (default $LMOPT_HOME/steps)."),
        opt("registry", None, "--registry", annotation=str | None, help="SQLAlchemy URL of the run registry."),
        opt("json_out", None, "--json", annotation=Path | None, help="Write the summary to this JSON file."),
    ]
    if verb.output == "model":
        params += [opt("eval", None, "--eval", annotation=list[str] | None,
                       help="Evaluate before and after on this task (repeatable)."),
                   opt("eval_limit", None, "--eval-limit", annotation=int | None, help="First N items/windows.")]
    for flag, (_fields, text) in verb.switches.items():
        params.append(opt(flag.replace("-", "_"), False, f"--{flag}", annotation=bool, help=text))
    return params


def add_verb(app: typer.Typer, verb: Verb, summary: str) -> None:
    """Register `verb` on `app` with options generated from its config."""
    # a verb without a model/dataset result gives --output to its config (export: the file it writes)
    common = COMMON - {"output"} if verb.output == "none" else COMMON
    reserved = common | {INPUTS[verb.input]} | {flag.replace("-", "_") for flag in verb.switches}
    options: list[FieldOption] = config_options(verb.config, verb.aliases, reserved)
    methods = len(union_members(verb.config))
    params = _common_parameters(verb) + as_parameters(options, methods, verb.short)

    def body(values: dict[str, Any]) -> None:
        fixed = {k: v for flag, (fields, _) in verb.switches.items() if values.get(flag.replace("-", "_"))
                 for k, v in fields.items()}
        config = config_from_cli(values, options, values.get("config"), values.get("set") or [], verb.config,
                                 fixed)
        # validate here, so an error names the --config file (or the command), not the one-step recipe
        where = f"{values['config']} (with the command's flags)" if values.get("config") else f"lmopt {verb.name}"
        parse_config(verb.config, config, where=where)
        inputs = {k: values.get(k) for k in ("model", "teacher", "input")}
        run_verb(verb, inputs, config, values)

    app.command(verb.name)(build_command(verb.name, summary, params, body))


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add every step verb: data verbs under `lmopt data`, the others at the top."""
    for verb in VERBS:
        add_verb(data_app if verb.input == "dataset" else app, verb, SUMMARIES[verb.step])


SUMMARIES = {
    "evaluate": "Evaluate a model: perplexity (pydoc, wikitext2, a file) and multiple-choice accuracy.",
    "bench": "Measure prefill and decode speed, time to first token, memory and size on disk.",
    "quantize": "Quantize a model (RTN, GPTQ, AWQ, W8A8, rotate+GPTQ) into packed low-bit weights.",
    "rotate": "Rotate a model's residual stream and attention heads (Hadamard, fused into the weights): "
              "the same model, easier to quantize to 4 bits.",
    "prune": "Prune a model: sparsity (magnitude, Wanda, SparseGPT; N:M) or structured shrinking.",
    "finetune": "Fine-tune a model (full or LoRA) on raw text (domain adaptation) or chat data.",
    "distill": "Distill a teacher into a student (a given model, or the teacher cut to N layers).",
    "clean": "Normalize, quality-filter, decontaminate, scrub PII and deduplicate INPUT into OUTPUT.",
    "export": "Export a model to GGUF (llama.cpp, Ollama), ONNX (ONNX Runtime) or vLLM's layout, with a parity check.",
    "augment": "Add EDA-edited and/or model-paraphrased copies of each row; originals are kept and marked.",
}
