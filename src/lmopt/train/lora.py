"""LoRA through peft: wrap a model with low-rank adapters, and merge them back into plain weights.

A LoRA layer computes W x + (alpha / r) * B A x with A (r, in) random and B (out, r) zero at the start,
so the wrapped model starts exactly equal to the base. Merging adds (alpha / r) * B A into W, after
which the model is a plain transformers model again (same forward, no peft needed to load it).
"""

from __future__ import annotations

from typing import Any

import torch

from lmopt.errors import LmoptError


def target_modules(model: Any, wanted: list[str]) -> list[str]:
    """The requested suffixes that match at least one Linear of `model` (error if none does)."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    found = [w for w in wanted if w in names]
    if not found:
        raise LmoptError(
            f"lora_targets: none of {wanted} is a Linear module of this model "
            f"(its Linear names: {sorted(names)})"
        )
    return found


def apply_lora(model: Any, r: int, alpha: float, dropout: float, targets: list[str]) -> Any:
    """Return `model` wrapped by peft with adapters on `targets`; only adapters are trainable."""
    from peft import LoraConfig, get_peft_model  # lazy: peft takes ~4 s to import; full fine-tuning never needs it

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules(model, targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_lora(model: Any) -> bool:
    return hasattr(model, "peft_config")


def merge_lora(model: Any) -> Any:
    """Fold the adapters into the base weights and return the plain base model."""
    return model.merge_and_unload() if is_lora(model) else model


def trainable_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied tensors counted once."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total
