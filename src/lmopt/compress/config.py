"""Configs the compression methods share, free of torch so that reading a recipe stays instant."""

from __future__ import annotations

from pydantic import Field

from lmopt.configs import Config


class CalibrationConfig(Config):
    """Where calibration text comes from and how much of it is used."""

    source: str = "pydoc-train"
    """Any `lmopt.data.load_text` source: pydoc-train, pydoc, wikitext2, or a .txt/.jsonl path."""
    n_samples: int = Field(default=128, ge=1)
    """Number of calibration windows."""
    seq_len: int = Field(default=512, ge=8)
    """Tokens per window."""
    batch_size: int = Field(default=8, ge=1)
    """Windows per forward pass while calibrating (memory vs speed)."""
    seed: int = 0
    """Seed for picking window start positions."""
    data_dir: str | None = None
    """Data dir for sources that live there (wikitext2)."""
