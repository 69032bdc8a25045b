"""Typed configs of the quantization methods: a verb plus a config, `quantize(model, GPTQConfig(...))`.

Kept free of torch imports so that reading or validating a recipe stays instant.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmopt.compress.config import CalibrationConfig
from lmopt.configs import Config, method_union


class WeightQuantConfig(Config):
    """What every method shares: the weight grid and which tensors it covers."""

    version: int = 1
    bits: int = Field(default=4, ge=2, le=8)
    """Bits per weight: 8, 4 or 3 (2 works but loses most quality)."""
    group_size: int = 128
    """Input columns sharing one scale/zero: 32, 64, 128...; 0 = one group per output channel. When
    it does not divide a layer's width the last group is shorter (576 = 4 x 128 + 64). Default 128
    below 8 bits and 0 (per channel) at 8 bits, the layout the fast int8 kernel runs."""
    sym: bool = False
    """Symmetric grid (zero fixed at the middle) instead of min..max per group."""
    lm_head_bits: int | None = Field(default=8, ge=2, le=8)
    """Bits of the lm_head (per output channel when 8, else `group_size` groups). The lm_head (tied to
    the embedding in small models) is the most sensitive tensor; None keeps it unquantized."""
    clip: float = Field(default=0.0, ge=0, lt=1)
    """Search each group's range shrink factor in [1 - clip, 1] for the least rounding error (GPTQ's
    `mse` option); 0 = plain min..max. Helps at 3-4 bits; no effect worth its time at 8."""
    skip: list[str] = Field(default_factory=list)
    """Linear layers whose qualified name contains one of these strings stay unquantized."""

    @model_validator(mode="before")
    @classmethod
    def _per_channel_at_8_bits(cls, data: Any) -> Any:
        # group-wise int8 has no fast CPU kernel (it de-quantized every call: 0.35x bf16 decode)
        if isinstance(data, dict) and data.get("bits", 4) >= 8 and "group_size" not in data:
            data = {**data, "group_size": 0}
        return data

    @field_validator("group_size")
    @classmethod
    def _group(cls, value: int) -> int:
        if value < 0:
            return 0
        if value and (value < 8 or value % 8):
            raise ValueError("group_size must be 0 (per channel) or a multiple of 8")
        return value


class RTNConfig(WeightQuantConfig):
    """Round-to-nearest: no calibration data."""

    method: Literal["rtn"] = "rtn"


class GPTQConfig(WeightQuantConfig):
    """GPTQ: Hessian-guided rounding that spreads each column's error over the columns left."""

    method: Literal["gptq"] = "gptq"
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    """Calibration text, amount and batching (shared by every calibrated method and pruning)."""
    damp: float = Field(default=0.01, gt=0, lt=1)
    """Dampening added to the Hessian diagonal, as a fraction of its mean."""
    block_size: int = Field(default=128, ge=1)
    """Columns per lazy block update."""
    act_order: bool = True
    """Quantize columns in order of decreasing Hessian diagonal (activation magnitude)."""
    refit_scales: bool = True
    """After GPTQ, refit each group's scale to its codes by least squares on the calibration Hessian
    (`algorithms.refit_scales`); kept per group of Linears only where the held-out error agrees."""
    refit_rounds: int = Field(default=8, ge=1, le=20)
    """With `refit_scales`: rounds of refit, each after the first re-running GPTQ on the refit grid so
    the codes follow the new scales (stops early when the calibration error stops falling). Each
    round costs one more GPTQ pass over the weights (not more forward passes)."""
    safeguard: bool = True
    """Per group of Linears sharing an input (q/k/v, o, gate/up, down) keep GPTQ's rounding only where
    its output error on held-out calibration windows (1 in 8 extra, never in a Hessian) is below
    round-to-nearest's, else RTN; the choice per layer is in the report (`safeguard`). Costs 1/8 more
    calibration forward passes."""


class AWQConfig(WeightQuantConfig):
    """AWQ: per-input-channel scales searched so the quantized outputs stay close, then rounding."""

    method: Literal["awq"] = "awq"
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    """Calibration text, amount and batching (shared by every calibrated method and pruning)."""
    grid: int = Field(default=20, ge=1)
    """Number of alpha values tried in [0, 1) for the scales x_mean^alpha / w_mean^(1-alpha)."""
    refit_scales: bool = True
    """With `rounding: rtn`, refit each group's scales to the rounded codes by least squares on the
    rescaled inputs' Hessian (`algorithms.refit_scales`), kept per group of Linears where the held-out
    windows agree (GPTQ's refit; with `rounding: gptq` GPTQConfig's refit rounds apply instead). On by
    default: W4 g128 perplexity 3.7% / 3.0% / 1.7% lower than without it on the three test domains
    (BENCHMARKS.md, fifteenth session)."""
    rounding: Literal["rtn", "gptq"] = "rtn"
    """How the rescaled weights are rounded: to nearest (AWQ as published) or by GPTQ with the
    rescaled inputs' Hessian (AWQ then GPTQ, as llm-compressor recipes chain them), with GPTQConfig's
    defaults, its scale refit rounds included."""
    safeguard: bool = True
    """Per group of Linears (q/k/v, o, gate/up, down) keep AWQ's scaled rounding only where its output
    error on held-out calibration windows (1 in 8 extra, never in a scale search) is below plain
    round-to-nearest's; else the group's scales are unfolded and it is rounded to nearest. The choice
    per layer is in the report (`safeguard`)."""


class W8A8Config(WeightQuantConfig):
    """int8 weights (per channel, symmetric) and int8 activations quantized on the fly."""

    method: Literal["w8a8"] = "w8a8"
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    """Calibration text, amount and batching (shared by every calibrated method and pruning)."""
    bits: int = Field(default=8, ge=8, le=8)
    group_size: int = 0
    sym: bool = True
    smoothquant: bool = True
    """Migrate activation outliers into the weights first (SmoothQuant)."""
    alpha: float = Field(default=0.5, ge=0, le=1)
    """SmoothQuant migration strength."""

    @field_validator("sym")
    @classmethod
    def _sym(cls, value: bool) -> bool:
        if not value:
            raise ValueError("w8a8 weights are symmetric (the int8 GEMM has no weight zero point)")
        return value


class RotateConfig(Config):
    """An offline rotation of a llama-style model (QuaRot/SpinQuant style) fused into its weights: the
    result is an ordinary HF model computing the same function, whose weights GPTQ rounds better at
    4 bits (not RTN: see rotate_model.py). The `rotate` step's config, and `rotation` of `rotate+gptq`."""

    seed: int = 0
    """Seed of the random +-1 signs multiplying the Hadamard matrices (and of the random orthogonal
    factor where a size has no Hadamard construction)."""
    construction: Literal["auto", "hadamard", "kronecker"] = "auto"
    """`auto`: a true Hadamard where one is built (576 = 4 x 12 x 12 Paley/Sylvester), else `kronecker`:
    Sylvester 2^k x a seeded random orthogonal for the odd factor (see rotate.py)."""


class RotateGPTQConfig(GPTQConfig):
    """Rotate the model (residual stream, attention values/outputs), then GPTQ: the 4-bit method."""

    method: Literal["rotate+gptq"] = "rotate+gptq"  # type: ignore[assignment]
    rotation: RotateConfig = Field(default_factory=RotateConfig)
    """How the rotation is built (seed, construction)."""


METHOD_CONFIGS: dict[str, type[WeightQuantConfig]] = {
    "rtn": RTNConfig, "gptq": GPTQConfig, "awq": AWQConfig, "w8a8": W8A8Config, "rotate+gptq": RotateGPTQConfig}


class QuantizeOutput(Config):
    """What the `quantize` step adds to every method's config: how the result is saved."""

    export_hf: bool = False
    """Save the de-quantized model as plain HF instead of the packed low-bit format."""


QuantizeStepConfig = method_union(list(METHOD_CONFIGS.values()), default="gptq", extra=QuantizeOutput)
"""The `quantize` step: `method` plus that method's own fields, e.g. `{method: awq, rounding: gptq}`."""
