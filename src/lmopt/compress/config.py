"""Configs the compression methods share, free of torch so that reading a recipe stays instant."""

from __future__ import annotations

from pydantic import Field

from lmopt.configs import Config


class CalibrationConfig(Config):
    """Where calibration text comes from and how much of it is used."""

    source: str = "mix"
    """`mix` (default: Python docs + WikiText-2 validation + Dolly instructions + PubMed abstracts 1-900,
    equal shares of whatever is present; never the text benchmarks evaluate on; see
    `lmopt.compress.calibration_data`), a named text source (pydoc-train, pydoc, wikitext2), or your own
    file: `.txt`, or `.jsonl`/`.json` rows with `text` or chat fields (messages, prompt+response,
    instruction+output), which are rendered with the model's chat template."""
    n_samples: int = Field(default=128, ge=1)
    """Number of calibration windows (128 x 512 tokens by default: enough for GPTQ's 1536-wide Hessians,
    and the calibration activations of a 576-wide model stay near 150 MB)."""
    seq_len: int = Field(default=512, ge=8)
    """Tokens per window."""
    batch_size: int = Field(default=8, ge=1)
    """Windows per forward pass while calibrating (memory vs speed)."""
    seed: int = 0
    """Seed for picking window start positions."""
    data_dir: str | None = None
    """Data dir for sources that live there (wikitext2, the mix's parts); default `$LMOPT_DATA_DIR` or a
    `shared/data` found near the working directory."""
