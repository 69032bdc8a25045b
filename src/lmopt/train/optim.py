"""Optimizer, learning-rate schedule and dropout settings for a model about to be trained.

Weight decay pulls weights towards zero; that is a sensible prior for matmul weights but not for norm
gains (whose neutral value is 1), biases, or embeddings (rare tokens would be shrunk just for being
rare). So `param_groups` puts those in a group with decay 0, as GPT-2/nanoGPT and HF Trainer do.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch


def no_decay_names(model: Any) -> set[str]:
    """Names of the trainable parameters that get no weight decay: norms, biases and embeddings."""
    skip_ids = set()
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        if is_norm or isinstance(module, torch.nn.Embedding):
            skip_ids.update(id(p) for p in module.parameters(recurse=False))
    names = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in skip_ids or name.endswith("bias") or param.ndim < 2:
            names.add(name)
    return names


def param_groups(model: Any, weight_decay: float, extra: list[Any] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: decayed matmul weights, and undecayed norms/biases/embeddings (tied ones once).

    `extra` are additional trainable parameters (e.g. a distillation projection), decayed if 2-D.
    """
    skip = no_decay_names(model)
    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (no_decay if name in skip else decay).append(param)
    for param in extra or []:
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: Any, config: Any, extra: list[Any] | None = None) -> Any:
    groups = [g for g in param_groups(model, config.weight_decay, extra) if g["params"]]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.adam_betas))


def lr_lambda(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at `step` (0-based): linear warmup, then the decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def make_scheduler(optimizer: Any, config: Any, total_steps: int) -> Any:
    warmup = config.warmup_steps or int(config.warmup_ratio * total_steps)
    fn = functools.partial(lr_lambda, total=total_steps, warmup=warmup, kind=config.scheduler)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


DROPOUT_CONFIG_FIELDS = (
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


def apply_dropout(model: Any, p: float) -> int:
    """Set every dropout the architecture has to `p`; returns how many places were changed.

    Covers `nn.Dropout` modules (GPT-2/BERT style) and the float `attention_dropout` attribute that
    Llama-family attention modules read in forward (they have no hidden dropout).
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p, changed = p, changed + 1
        elif isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout, changed = p, changed + 1
    config = getattr(model, "config", None)
    for field in DROPOUT_CONFIG_FIELDS:
        if isinstance(getattr(config, field, None), float):
            setattr(config, field, p)
    return changed
