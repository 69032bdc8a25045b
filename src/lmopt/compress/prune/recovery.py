"""Recovery after structured pruning: a short distillation from the unpruned model (`lmopt.train.distill`).

The pruned model is the student, the model it was cut from the teacher (same tokenizer, so logits
line up). The training text is generic (by default the Python-docs training split), never the text the
model is evaluated on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from lmopt.configs import Config
from lmopt.data.text import TEXT_SOURCES, load_text
from lmopt.train.config import DistillConfig


def _default_distill() -> DistillConfig:
    # Mostly the teacher's distributions (alpha 0.2), T = 1: the student should match the dense model.
    return DistillConfig(max_minutes=10, seq_len=256, batch_size=4, lr=1e-4, warmup_steps=5, alpha=0.2,
                         temperature=1.0, val_fraction=0.02, max_val_batches=4)


class RecoveryConfig(Config):
    """Distill the dense model into the pruned one for a short while."""

    data: str = "pydoc-train"
    """Training text: a text source (pydoc-train, ...) or a .txt/.jsonl file (relative to the recipe)."""
    distill: DistillConfig = Field(default_factory=_default_distill)
    """How to train (time budget, steps, learning rate, loss); `lmopt.train.DistillConfig`. Fields given
    here override this module's defaults (10 minutes, seq_len 256, lr 1e-4, alpha 0.2, T 1)."""

    @field_validator("distill", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        return {**_default_distill().to_dict(), **value} if isinstance(value, dict) else value


def recovery_rows(source: str, data_dir: str | None = None, chunk_chars: int = 4000) -> Any:
    """A file path for lmopt.train, or a named text source cut into `chunk_chars` documents."""
    if source not in TEXT_SOURCES and Path(source).suffix in (".txt", ".jsonl", ".json", ".csv", ".parquet"):
        return source
    text = load_text(source, data_dir)
    return [text[i:i + chunk_chars] for i in range(0, len(text), chunk_chars)]


def recover(teacher: Any, student: Any, config: RecoveryConfig,
            data_dir: str | None = None) -> tuple[Any, dict]:
    """Distill `teacher` into `student` (LoadedModels); return (the student's trained model, metrics)."""
    # lazy: prune/config.py imports this module (CLI start-up); the training stack takes seconds to load
    from lmopt.train.distill import distill

    result = distill(teacher, student, recovery_rows(config.data, data_dir), config.distill)
    return result.model.model, result.metrics
