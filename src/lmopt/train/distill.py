"""`distill(teacher, student, data, DistillConfig(...))`: train a student on a teacher's distributions.

loss = alpha * CE(student, data) + (1 - alpha) * T^2 * D(teacher_T || student_T) [+ w * hidden MSE]
with D forward KL, reverse KL or generalized JSD (`losses.py`). The teacher runs in `no_grad` on every
batch, or once up front with its top-k logits cached to disk (`teacher_topk`) for repeated epochs.
Hidden-state matching maps each student layer to a teacher layer (the one it was cut from, else evenly
spaced) through a learned linear projection when the widths differ; the projection is trained with
the student (attached to it, so DDP syncs it and checkpoints save it) and dropped at the end.
Validation loss is the student's plain cross-entropy, so "best" means best held-out perplexity.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmopt.errors import LmoptError
from lmopt.io import atomic_path
from lmopt.train.callbacks import Callback
from lmopt.train.config import DistillConfig
from lmopt.train.loop import training_device
from lmopt.train.losses import hidden_mse, kd_loss, kd_loss_topk, masked_ce
from lmopt.train.setup import (
    TrainResult,
    collate_batch,
    finish,
    memory_plan,
    merge_adapters,
    pad_token_id,
    prepare_data,
    prepare_model,
    run_loop,
)

PROJECTION = "lmopt_distill_projection"


def check_vocab(teacher: Any, student: Any) -> None:
    """Distillation on logits needs the same token ids: same vocabulary and the same logit width."""
    t_vocab, s_vocab = teacher.tokenizer.get_vocab(), student.tokenizer.get_vocab()
    if t_vocab != s_vocab:
        diff = len(set(t_vocab.items()) ^ set(s_vocab.items()))
        raise LmoptError(
            f"teacher and student tokenizers differ ({len(t_vocab)} vs {len(s_vocab)} tokens, "
            f"{diff} mismatched entries): logit distillation needs a shared vocabulary"
        )
    t_out = teacher.model.get_output_embeddings().weight.shape[0]
    s_out = student.model.get_output_embeddings().weight.shape[0]
    if t_out != s_out:
        raise LmoptError(f"teacher has {t_out} output logits and the student {s_out}: they must match")


def layer_map(student: Any, n_teacher: int) -> list[int]:
    """Teacher hidden-state index for each student layer output (hidden_states[1:])."""
    n_student = student.config.num_hidden_layers
    kept = getattr(student.config, "lmopt_teacher_layers", None)
    if kept and len(kept) == n_student:
        return [i + 1 for i in kept]
    return [round((j + 1) * n_teacher / n_student) for j in range(n_student)]


def attach_projection(student: Any, teacher: Any) -> None:
    """One Linear(d_student, d_teacher) per student layer (identity-initialized when widths match)."""
    d_s, d_t = student.config.hidden_size, teacher.config.hidden_size
    projections = torch.nn.ModuleList()
    for _ in range(student.config.num_hidden_layers):
        proj = torch.nn.Linear(d_s, d_t, bias=False)
        if d_s == d_t:
            torch.nn.init.eye_(proj.weight)
        projections.append(proj)
    student.add_module(PROJECTION, projections.to(student.device, student.dtype))


def teacher_topk(
    teacher: Any, examples: list[dict], k: int, pad_id: int, path: Path, batch_size: int = 4
) -> dict[str, Any]:
    """Run the teacher once over `examples`; save and return top-k logits (n, len, k) and ids."""
    if path.exists():
        return load_file(str(path))
    width = max(len(ex["input_ids"]) for ex in examples)
    values = torch.zeros(len(examples), width, k, dtype=torch.bfloat16)
    indices = torch.zeros(len(examples), width, k, dtype=torch.int32)
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = collate_batch(list(enumerate(examples[start : start + batch_size])), pad_id)
            logits = teacher(
                input_ids=chunk["input_ids"].to(teacher.device),
                attention_mask=chunk["attention_mask"].to(teacher.device),
            ).logits
            top = logits.float().topk(k, dim=-1)  # (batch, len, k)
            n, length = top.values.shape[:2]
            values[start : start + n, :length] = top.values.to(torch.bfloat16).cpu()
            indices[start : start + n, :length] = top.indices.to(torch.int32).cpu()
    cache = {"values": values, "indices": indices}
    with atomic_path(path) as tmp:
        save_file(cache, str(tmp))
    return cache


def distill_loss(
    student: Any,
    batch: dict[str, Any],
    *,
    teacher: Any,
    config: DistillConfig,
    layers: list[int] | None,
    cache: dict[str, Any] | None,
) -> Any:
    """alpha * CE + (1 - alpha) * T^2 * divergence (+ hidden_weight * MSE), see the module docstring."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    out = student(input_ids=ids, attention_mask=mask, output_hidden_states=layers is not None)
    loss = config.alpha * masked_ce(out.logits, labels, config.label_smoothing)
    if config.alpha >= 1.0 and layers is None:
        return loss  # plain cross-entropy: the teacher is not needed (the baseline of a comparison)
    if cache is not None:
        rows = batch["index"].cpu()
        values = cache["values"][rows, : ids.shape[1]].to(out.logits.device)
        top_ids = cache["indices"][rows, : ids.shape[1]].to(out.logits.device).long()
        kd = kd_loss_topk(
            out.logits, values, top_ids, labels, config.loss, config.temperature, config.jsd_beta
        )
        return loss + (1 - config.alpha) * kd
    with torch.no_grad():
        t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=layers is not None)
    kd = kd_loss(out.logits, t_out.logits, labels, config.loss, config.temperature, config.jsd_beta)
    loss = loss + (1 - config.alpha) * kd
    if layers is not None:
        projections = getattr(student, PROJECTION, None) or getattr(student.module, PROJECTION)
        terms = [
            hidden_mse(proj(out.hidden_states[j + 1]), t_out.hidden_states[t], mask)
            for j, (proj, t) in enumerate(zip(projections, layers, strict=True))
        ]
        loss = loss + config.hidden_weight * torch.stack(terms).mean()
    return loss


def distill(
    teacher: Any,
    student: Any,
    data: Any,
    config: DistillConfig | None = None,
    *,
    callbacks: Callback | list[Callback] | None = None,
    val_data: Any = None,
    run_dir: str | Path | None = None,
) -> TrainResult:
    """Distill `teacher` into `student` (both `LoadedModel`s sharing a vocabulary) on `data`.

    The student trains in place (all its weights, or LoRA adapters with `method: lora`); the result
    holds the student with its best weights by held-out cross-entropy. Callbacks, `val_data` and
    `run_dir` work as in `finetune`. With `teacher_topk` the cache lives in `run_dir` (or a temp dir).
    """
    config = config or DistillConfig()
    check_vocab(teacher, student)
    if config.teacher_topk and config.hidden_weight > 0:
        raise LmoptError(
            "teacher_topk caches logits only; hidden-state matching (hidden_weight > 0) needs "
            "the teacher on the fly: set one of them off"
        )
    prepared = prepare_data(data, student.tokenizer, config, val_data)
    pad_id = pad_token_id(student.tokenizer)
    device = training_device()
    t_model = teacher.model.to(device).eval().requires_grad_(False)
    run_path = Path(run_dir) if run_dir else None
    cache = None
    with tempfile.TemporaryDirectory(prefix="lmopt-distill-") as scratch:
        if config.teacher_topk:
            cache_dir = run_path or Path(scratch)
            cache = teacher_topk(
                t_model,
                prepared.train,
                config.teacher_topk,
                pad_id,
                cache_dir / f"teacher_top{config.teacher_topk}.safetensors",
            )
        plan = memory_plan(student.model, config)
        s_model = prepare_model(student.model, config)
        layers = None
        if config.hidden_weight > 0:
            layers = layer_map(s_model, t_model.config.num_hidden_layers)
            attach_projection(s_model, t_model)
        loss_fn = functools.partial(distill_loss, teacher=t_model, config=config, layers=layers, cache=cache)
        outcome = run_loop(
            s_model,
            prepared,
            loss_fn,
            config,
            pad_id=pad_id,
            callbacks=callbacks,
            run_dir=run_path,
            label="distill",
            plan=plan,
        )
    trained = outcome.model
    if hasattr(trained, PROJECTION):  # the hidden-state projections train with the student, not ship with it
        delattr(trained, PROJECTION)
    _, trained = merge_adapters(trained, config)  # no separate `adapter`: an unmerged student is the model
    extra = {"teacher": teacher.ref, "loss": config.loss,
             "gradient_checkpointing": plan.gradient_checkpointing, "memory_planned_mb": plan.planned_mb,
             "malloc_mmap_threshold_mb": outcome.malloc_mmap_threshold_mb}
    return finish(student, trained, outcome, prepared, config, "distill", extra_metrics=extra)
