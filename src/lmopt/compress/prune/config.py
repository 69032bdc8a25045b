"""Typed configs of the pruning methods (no torch import: reading a recipe stays instant).

`prune(model, WandaConfig(sparsity=0.5))`, `prune(model, StructuredConfig(mlp=0.25, heads=0.25,
layers=4))`. The recipe step `prune` takes one flat map with a `method` key (`PruneStepConfig`): that
method's own config, chosen by pydantic from `method`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lmopt.compress.config import CalibrationConfig
from lmopt.compress.prune.math import parse_pattern
from lmopt.compress.prune.recovery import RecoveryConfig
from lmopt.configs import Config, method_union


def _default_calibration() -> CalibrationConfig:
    # 64 x 512 tokens: a quarter of the papers' 128 x 2048, because calibration runs on a 2-core CPU.
    return CalibrationConfig(n_samples=64, seq_len=512)


class _SparsityFields(Config):
    sparsity: float = Field(default=0.5, ge=0.0, lt=1.0)
    """Fraction of each pruned Linear's weights set to zero (ignored when `pattern` is set)."""
    pattern: str | None = None
    """N:M semi-structured pattern, e.g. "2:4" (keep 2 of every 4 consecutive input weights)."""
    skip: list[str] = Field(default_factory=list)
    """Linear names (substrings, e.g. "down_proj") left dense. Embeddings and lm_head are never pruned."""
    version: int = 1

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        parse_pattern(value)  # ValueError -> a validation error naming the field
        return value

    def target_sparsity(self) -> float:
        nm = parse_pattern(self.pattern)
        return 1 - nm[0] / nm[1] if nm else self.sparsity


class MagnitudeConfig(_SparsityFields):
    """Remove the smallest |W| of every Linear in the decoder layers (no calibration data)."""

    method: Literal["magnitude"] = "magnitude"


class WandaConfig(_SparsityFields):
    """Wanda: remove the lowest |W_ij| * ||X_j|| in every output row, X from calibration text."""

    method: Literal["wanda"] = "wanda"
    calibration: CalibrationConfig = Field(default_factory=_default_calibration)
    """Calibration text and amount (sequential, layer by layer, shared with quantization)."""


class SparseGPTConfig(_SparsityFields):
    """SparseGPT: second-order mask choice and an OBS update of the remaining weights, layer by layer."""

    method: Literal["sparsegpt"] = "sparsegpt"
    calibration: CalibrationConfig = Field(default_factory=_default_calibration)
    """Calibration text and amount (sequential, layer by layer, shared with quantization)."""
    blocksize: int = Field(default=128, ge=1)
    """Columns per lazy-update block; an unstructured mask is chosen per block (the paper's 128)."""
    damp: float = Field(default=0.01, gt=0.0)
    """Ridge added to the Hessian diagonal, as a fraction of its mean."""


class StructuredConfig(Config):
    """Remove MLP channels, attention heads and whole decoder layers; the model really shrinks."""

    method: Literal["structured"] = "structured"
    mlp: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Fraction of MLP intermediate channels removed, the same count in every layer."""
    heads: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Fraction of attention query heads removed, rounded to what grouped-query attention allows."""
    head_mode: Literal["query", "group"] = "query"
    """`query`: drop query heads inside every KV group (K/V kept); `group`: drop whole KV groups."""
    layers: int = Field(default=0, ge=0)
    """Whole decoder layers removed, those with the lowest block influence on calibration data."""
    importance: Literal["activation", "taylor"] = "activation"
    """Channel/head importance: output energy from calibration activations, or first-order Taylor
    |w * dL/dw| from LM-loss gradients on the calibration windows."""
    refit: bool = False
    """Least-squares refit of down_proj / o_proj on the kept inputs to reproduce the dense outputs. Off by
    default: with a few thousand calibration tokens from another domain it overfits them (WikiText-2 ppl
    after removing 25% of SmolLM2's MLP channels: 31.6 without, 84.9 with, 4 x 512 pydoc tokens)."""
    round_to: int = Field(default=8, ge=1)
    """Kept MLP width is rounded to a multiple of this (vector-friendly shapes)."""
    calibration: CalibrationConfig = Field(
        default_factory=lambda: CalibrationConfig(n_samples=32, seq_len=512))
    """Calibration text and amount for importances, block influence and the refit."""
    recover: RecoveryConfig | None = None
    """The `prune` step only: distill the unpruned model into the pruned one afterwards (None = no
    recovery). Unstructured methods have no such field: training would refill their zeros."""
    version: int = 1


METHOD_CONFIGS: dict[str, type[Config]] = {
    "magnitude": MagnitudeConfig, "wanda": WandaConfig, "sparsegpt": SparseGPTConfig,
    "structured": StructuredConfig,
}
PruneMethodConfig = MagnitudeConfig | WandaConfig | SparseGPTConfig | StructuredConfig


PruneStepConfig = method_union(list(METHOD_CONFIGS.values()), default="wanda")
"""The `prune` recipe step: `method` plus that method's own fields, e.g.
`{method: sparsegpt, sparsity: 0.5, pattern: "2:4"}` or `{method: structured, mlp: 0.25, layers: 4}`."""
