"""The `quantize` step: load the current model in fp32, quantize it, save the low-bit artifact.

```yaml
steps:
  - quantize: {method: gptq, bits: 4, group_size: 128, calibration: {n_samples: 64}}
```
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field, model_validator

from lmopt.compress.calibration import CalibrationConfig
from lmopt.compress.quantize.config import METHOD_CONFIGS, WeightQuantConfig
from lmopt.configs import Config
from lmopt.errors import LmoptError
from lmopt.pipeline.steps import StepContext, StepResult, register_step

STEP_ONLY = {"method", "calibration", "export_hf", "batch_size"}


class QuantizeStepConfig(Config):
    """A method name plus that method's fields (see RTNConfig, GPTQConfig, AWQConfig, W8A8Config)."""

    method: Literal["rtn", "gptq", "awq", "w8a8"] = "gptq"
    bits: int | None = None
    """Weight bits (method default when unset: 4, or 8 for w8a8)."""
    group_size: int | None = None
    """Columns per scale group; 0 = per channel."""
    sym: bool | None = None
    lm_head_bits: int | None = 8
    """lm_head bits; null keeps it unquantized."""
    skip: list[str] | None = None
    damp: float | None = None
    """GPTQ only: Hessian dampening."""
    block_size: int | None = None
    """GPTQ only: lazy block size."""
    act_order: bool | None = None
    """GPTQ only: columns in order of decreasing activation."""
    grid: int | None = None
    """AWQ only: alpha grid points."""
    smoothquant: bool | None = None
    """W8A8 only: SmoothQuant migration."""
    alpha: float | None = None
    """W8A8 only: SmoothQuant strength."""
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    batch_size: int = Field(default=8, ge=1)
    """Calibration windows per forward pass."""
    export_hf: bool = False
    """Save the de-quantized model as plain HF instead of the packed low-bit format."""

    def method_config(self) -> WeightQuantConfig:
        fields = {k: getattr(self, k) for k in self.model_fields_set - STEP_ONLY}
        return METHOD_CONFIGS[self.method].parse(fields, where=f"quantize ({self.method})")

    @model_validator(mode="after")
    def _check_method_fields(self) -> QuantizeStepConfig:
        try:  # a field of another method, or a bad value: one clear error now
            self.method_config()
        except LmoptError as exc:
            raise ValueError(str(exc)) from None
        return self


def quantize_model(ctx: StepContext, config: QuantizeStepConfig) -> tuple[Any, dict[str, Any]]:
    """Load the model in fp32 and quantize it; returns (LoadedModel, report)."""
    from lmopt.compress.quantize.apply import quantize
    from lmopt.evaluate.speed import peak_rss_mb

    loaded = ctx.load_model(dtype="float32")
    calibration = config.calibration
    if calibration.data_dir is None and ctx.data_dir is not None:
        calibration = calibration.model_copy(update={"data_dir": str(ctx.data_dir)})
    report = quantize(loaded.model, config.method_config(), calibration, loaded.tokenizer, config.batch_size)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return loaded, report


@register_step("quantize", QuantizeStepConfig)
def quantize_step(ctx: StepContext, config: QuantizeStepConfig) -> StepResult:
    """Quantize the current model (RTN, GPTQ, AWQ or W8A8) and save it."""
    from lmopt.compress.quantize.storage import export_hf, save_quantized
    from lmopt.evaluate.speed import size_on_disk_mb
    from lmopt.models.card import ModelCard

    started = time.time()
    loaded, report = quantize_model(ctx, config)
    card = ModelCard(name=f"{loaded.card.name or 'model'}-{config.method}-w{config.method_config().bits}",
                     parent=str(ctx.model), parent_hash=loaded.hash, step="quantize", config=config.to_dict())
    save = export_hf if config.export_hf else save_quantized
    path = save(loaded.model, loaded.tokenizer, ctx.output, card)
    metrics = {"quantize_seconds": report["seconds"], "peak_rss_mb": report["peak_rss_mb"],
               "size_on_disk_mb": size_on_disk_mb(path), "lm_head": report["lm_head"],
               "step_seconds": round(time.time() - started, 2)}
    if ctx.registry is not None:
        ctx.registry.record("quantize", str(ctx.model), metrics, model_hash=loaded.hash,
                            config=config.to_dict())
    return StepResult(model=path, metrics=metrics)
