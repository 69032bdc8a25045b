"""The lineage/metrics card saved next to every model artifact as `lmopt.json`.

A card says where a model came from (parent artifact, the step and its config), what format its
weights are stored in (plain HF, or a low-bit format that needs lmopt to load), and what was measured.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CARD_NAME = "lmopt.json"


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: int = 1
    name: str | None = None
    """A short human name (alias, or the step that made it)."""
    parent: str | None = None
    """Reference of the model this one was made from (path, alias or hub id)."""
    parent_hash: str | None = None
    step: str | None = None
    """The step that produced this artifact (`quantize`, `prune`, ...); None for imports."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The step's config, as saved (reproducibility)."""
    format: str = "hf"
    """`hf` loads with plain transformers; other formats load through the module registered for them."""
    format_info: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: float = Field(default_factory=time.time)

    def write(self, directory: Path) -> None:
        (Path(directory) / CARD_NAME).write_text(json.dumps(self.model_dump(mode="json"), indent=2))

    @classmethod
    def read(cls, directory: Path) -> ModelCard:
        path = Path(directory) / CARD_NAME
        if not path.exists():
            return cls()
        return cls.model_validate_json(path.read_text())


_HASH_MEMO: dict[tuple[str, float, int], str] = {}


def content_hash(directory: str | Path) -> str:
    """sha256 over the files that define a model (weights, config, tokenizer), not the card.

    Memoized per (path, mtime, size) so repeated calls in one process are free.
    """
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CARD_NAME)
    stat_key = (str(directory.resolve()), max((p.stat().st_mtime for p in files), default=0.0),
                sum(p.stat().st_size for p in files))
    if stat_key in _HASH_MEMO:
        return _HASH_MEMO[stat_key]
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(directory)).encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    _HASH_MEMO[stat_key] = digest.hexdigest()[:16]
    return _HASH_MEMO[stat_key]
