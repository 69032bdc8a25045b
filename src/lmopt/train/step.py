"""The `finetune` and `distill` recipe steps: load, train, save an artifact with its lineage card.

Checkpoints go to `<step dir>.run/` next to the step's output dir (the recipe runner clears the step
dir before a retry, the `.run` dir survives), so re-running an interrupted recipe resumes training
from its last checkpoint. The `.run` dir is removed once the artifact is saved.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from lmopt.errors import LmoptError
from lmopt.hardware import apply_threads
from lmopt.models import load_model, save_model
from lmopt.step import Step, StepContext, StepResult
from lmopt.train.config import DistillConfig, DistillStepConfig, FinetuneStepConfig, TrainConfig
from lmopt.train.data import NAMED_SOURCES
from lmopt.train.distill import distill
from lmopt.train.finetune import finetune
from lmopt.train.setup import prepare_data
from lmopt.train.students import student_from_teacher


def run_dir_for(ctx: StepContext) -> Path:
    step_dir = ctx.output.parent
    return step_dir.with_name(step_dir.name + ".run")


def data_paths(ctx: StepContext, config: Any) -> tuple[Path | str, Path | None]:
    """The training data (a path, or a named text source such as `pydoc-train`) and validation path."""
    if config.data in NAMED_SOURCES:
        data: Path | str | None = config.data
    else:
        data = ctx.resolve_path(config.data) if config.data else ctx.data
    if data is None:
        raise LmoptError(
            f"{config.__class__.__name__}: no training data (set `data` in the step or the recipe)"
        )
    val = ctx.resolve_path(config.val_data) if config.val_data else None
    return data, val


def save_result(ctx: StepContext, result: Any, parent: Any, run_dir: Path) -> StepResult:
    """Save the trained model with its card (parent hash added), clean the run dir."""
    card = result.model.card.model_copy(update={"parent_hash": parent.hash})
    path = save_model(result.model.model, result.model.tokenizer, ctx.output, card)
    shutil.rmtree(run_dir, ignore_errors=True)
    return StepResult(model=path, metrics={**result.metrics, "history": result.history},
                      model_hash=parent.hash)


def finetune_step(ctx: StepContext, config: FinetuneStepConfig) -> StepResult:
    """Fine-tune the current model (full or LoRA) on raw text or chat data."""
    apply_threads()
    data, val = data_paths(ctx, config)
    loaded = load_model(ctx.require_model(), dtype="float32")  # master weights in fp32; bf16 is autocast, not storage
    train_config = TrainConfig(**config.model_dump(exclude={"data", "val_data"}))
    run_dir = run_dir_for(ctx)
    result = finetune(loaded, data, train_config, val_data=val, run_dir=run_dir)
    return save_result(ctx, result, loaded, run_dir)


def distill_step(ctx: StepContext, config: DistillStepConfig) -> StepResult:
    """Distill the current model (the teacher) into a student: a given model or the teacher cut down."""
    apply_threads()
    data, val = data_paths(ctx, config)
    teacher = load_model(ctx.require_model(), dtype="float32")
    if config.student is not None:
        ref = config.student
        local = ctx.resolve_path(ref)
        student = load_model(local if local.exists() else ref, dtype="float32")
    else:
        student = cut_student(teacher, data, config)
    train_config = DistillConfig(
        **config.model_dump(exclude={"data", "val_data", "student", "student_layers", "layer_selection"})
    )
    run_dir = run_dir_for(ctx)
    result = distill(teacher, student, data, train_config, val_data=val, run_dir=run_dir)
    return save_result(ctx, result, teacher, run_dir)


def cut_student(teacher: Any, data: Path, config: DistillStepConfig) -> Any:
    """The teacher cut to `student_layers` layers (block influence measured on 8 training blocks)."""
    batches = None
    if config.layer_selection == "block_influence":
        prepared = prepare_data(data, teacher.tokenizer, config)
        batches = [torch.tensor([ex["input_ids"]]) for ex in prepared.train[:8]]
    return student_from_teacher(teacher, config.student_layers, config.layer_selection, batches)


FINETUNE = Step("finetune", FinetuneStepConfig, finetune_step)
DISTILL = Step("distill", DistillStepConfig, distill_step)
