"""`lmopt train MODEL --data PATH --output DIR` and `lmopt distill --teacher T --data PATH --output DIR`.

Each is a one-step recipe (`finetune` / `distill` step), so an interrupted command run again with the
same arguments resumes from its last checkpoint. `--config FILE.yaml` gives any config field; flags
given on the command line override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

# Options both commands declare alike (type, flag and help), declared once so the two cannot drift
# apart. The others differ between the commands: in help text (--output, --format, --config; distill
# gives none for --max-minutes, --bf16, --registry, --json) or they belong to one command only.
Data = Annotated[Path, typer.Option("--data", help=".txt, .jsonl or .json training data.")]
Epochs = Annotated[float | None, typer.Option("--epochs")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps")]
Lr = Annotated[float | None, typer.Option("--lr")]
BatchSize = Annotated[int | None, typer.Option("--batch-size")]
SeqLen = Annotated[int | None, typer.Option("--seq-len")]
EvalEvery = Annotated[int | None, typer.Option("--eval-every")]


def _config(path: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """Fields from `--config` YAML, overridden by the flags that were given."""
    import yaml

    from lmopt.errors import LmoptError

    base: dict[str, Any] = {}
    if path is not None:
        if not path.exists():
            raise LmoptError(f"{path}: config file not found")
        base = yaml.safe_load(path.read_text()) or {}
        if not isinstance(base, dict):
            raise LmoptError(f"{path}: a config file is a map of fields")
    return {**base, **{k: v for k, v in flags.items() if v is not None}}


def _run(
    step: str, config: dict[str, Any], model: str, output: Path, registry: str | None, json_out: Path | None
) -> None:
    from rich.console import Console

    from lmopt.pipeline import one_step_recipe, run_recipe

    reg = None
    if registry:
        from lmopt.monitor import Registry

        reg = Registry(registry)
    recipe = one_step_recipe(step, config, model, output=str(output.resolve()))
    console = Console()
    summary = run_recipe(recipe, Path.cwd(), registry=reg, log=console.print)
    metrics = {k: v for k, v in summary["steps"][-1]["metrics"].items() if k != "history"}
    console.print_json(data=metrics)
    console.print(f"saved {summary['output']}")
    if json_out:
        from lmopt.io import write_json

        write_json(json_out, summary)


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        model: str = typer.Argument(..., help="Alias, .gguf file, HF directory or hub id."),
        data: Data = ...,
        output: Path = typer.Option(..., "--output", "-o", help="Directory of the trained model."),
        format: str | None = typer.Option(None, "--format", help="auto, text (packed) or chat."),
        lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters (merged on save)."),
        lora_r: int | None = typer.Option(None, "--lora-r"),
        epochs: Epochs = None,
        max_steps: MaxSteps = None,
        max_minutes: float | None = typer.Option(None, "--max-minutes", help="Wall-clock budget."),
        lr: Lr = None,
        batch_size: BatchSize = None,
        seq_len: SeqLen = None,
        weight_decay: float | None = typer.Option(None, "--weight-decay"),
        dropout: float | None = typer.Option(None, "--dropout"),
        eval_every: EvalEvery = None,
        save_every: int | None = typer.Option(None, "--save-every"),
        val_data: Path | None = typer.Option(None, "--val-data"),
        bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast (fp32 master weights)."),
        config: Path | None = typer.Option(None, "--config", help="YAML with TrainConfig fields."),
        registry: str | None = typer.Option(None, "--registry", help="SQLAlchemy URL of the run registry."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the results to this JSON file."),
    ) -> None:
        """Fine-tune a model (full or LoRA) on raw text (domain adaptation) or chat data."""
        flags = {
            "data": str(data.resolve()),
            "format": format,
            "method": "lora" if lora else None,
            "lora_r": lora_r,
            "epochs": epochs,
            "max_steps": max_steps,
            "max_minutes": max_minutes,
            "lr": lr,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "weight_decay": weight_decay,
            "dropout": dropout,
            "eval_every": eval_every,
            "save_every": save_every,
            "val_data": str(val_data.resolve()) if val_data else None,
            "mixed_precision": "bf16" if bf16 else None,
        }
        _run("finetune", _config(config, flags), model, output, registry, json_out)

    @app.command("distill")
    def distill_cmd(
        teacher: str = typer.Option(..., "--teacher", help="The teacher model reference."),
        data: Data = ...,
        output: Path = typer.Option(..., "--output", "-o", help="Directory of the student."),
        student: str | None = typer.Option(None, "--student", help="A student model sharing the vocab."),
        student_layers: int | None = typer.Option(
            None, "--student-layers", help="Cut the student from the teacher: keep N layers."
        ),
        layer_selection: str | None = typer.Option(
            None, "--layer-selection", help="uniform or block_influence."
        ),
        loss: str | None = typer.Option(None, "--loss", help="forward_kl, reverse_kl or jsd."),
        temperature: float | None = typer.Option(None, "--temperature"),
        alpha: float | None = typer.Option(None, "--alpha", help="Weight of the plain cross-entropy."),
        hidden_weight: float | None = typer.Option(None, "--hidden-weight"),
        teacher_topk: int | None = typer.Option(None, "--teacher-topk", help="Cache teacher top-k logits."),
        format: str | None = typer.Option(None, "--format", help="auto, text or chat."),
        epochs: Epochs = None,
        max_steps: MaxSteps = None,
        max_minutes: float | None = typer.Option(None, "--max-minutes"),
        lr: Lr = None,
        batch_size: BatchSize = None,
        seq_len: SeqLen = None,
        eval_every: EvalEvery = None,
        bf16: bool = typer.Option(False, "--bf16"),
        config: Path | None = typer.Option(None, "--config", help="YAML with DistillConfig fields."),
        registry: str | None = typer.Option(None, "--registry"),
        json_out: Path | None = typer.Option(None, "--json"),
    ) -> None:
        """Distill a teacher into a student (a given model, or the teacher cut to N layers)."""
        flags = {
            "data": str(data.resolve()),
            "student": student,
            "student_layers": student_layers,
            "layer_selection": layer_selection,
            "loss": loss,
            "temperature": temperature,
            "alpha": alpha,
            "hidden_weight": hidden_weight,
            "teacher_topk": teacher_topk,
            "format": format,
            "epochs": epochs,
            "max_steps": max_steps,
            "max_minutes": max_minutes,
            "lr": lr,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "eval_every": eval_every,
            "mixed_precision": "bf16" if bf16 else None,
        }
        _run("distill", _config(config, flags), teacher, output, registry, json_out)
