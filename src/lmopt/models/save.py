"""Save a model as a standard HF directory (safetensors) plus `lmopt.json`, atomically.

The directory is written under a temporary name next to the target and renamed at the end
(`lmopt.io.atomic_directory`), so a crash never leaves a half-written artifact where a finished one
is expected.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmopt.io import atomic_directory
from lmopt.models.card import ModelCard


def save_model(
    model: Any,
    tokenizer: Any,
    directory: str | Path,
    card: ModelCard | None = None,
    *,
    save_weights: Callable[[Any, Path], None] | None = None,
) -> Path:
    """Write `model` + `tokenizer` + `card` to `directory` atomically and return the path.

    `save_weights(model, tmp_dir)` replaces `model.save_pretrained` for custom formats (e.g. packed
    low-bit weights); it must write `config.json` and the weight files itself.
    """
    card = card or ModelCard()

    def write(tmp: Path) -> None:
        if save_weights is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            save_weights(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        card.write(tmp)

    return atomic_directory(Path(directory), write)
