"""The `quantize` step: load the current model in fp32, quantize it, save the low-bit artifact.

```yaml
steps:
  - quantize: {method: gptq, bits: 4, group_size: 128, calibration: {n_samples: 64}}
  - quantize: {method: awq, rounding: gptq, clip: 0.1}
```
The config is `method` plus that method's own config (`QuantizeStepConfig` in config.py). A relative
`calibration.source` file is read from the recipe's folder. The saved card's `format_info.quantization`
records what was done: the calibration actually used (source, samples x seq_len, windows per part), the
safeguard's choice per layer and group of Linears, the lm_head, and the rotation (None: not rotated).
"""

from __future__ import annotations

import time
from typing import Any

from lmopt.compress.calibration_data import with_step_paths
from lmopt.compress.quantize.apply import quantize
from lmopt.compress.quantize.config import QuantizeStepConfig, WeightQuantConfig
from lmopt.compress.quantize.storage import export_hf, save_quantized
from lmopt.hardware import peak_rss_mb
from lmopt.io import size_on_disk_mb
from lmopt.models import load_model
from lmopt.models.card import ModelCard
from lmopt.step import Step, StepContext, StepResult


def quantize_model(ctx: StepContext, config: WeightQuantConfig) -> tuple[Any, dict[str, Any]]:
    """Load the model in fp32 and quantize it; returns (LoadedModel, report)."""
    config = with_step_paths(config, ctx)  # before loading: a missing file fails fast
    loaded = load_model(ctx.require_model(), dtype="float32")
    report = quantize(loaded.model, config, tokenizer=loaded.tokenizer)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return loaded, report


def quantization_info(report: dict[str, Any], parent: ModelCard) -> dict[str, Any]:
    """The card's record of a quantization `report` (apply.quantize): calibration (None for RTN),
    safeguard choices {layer: {group: {kept, <method>: error, rtn: error}}} and their counts, lm_head,
    and the rotation: this step's (rotate+gptq), else the one a `rotate` step recorded in the parent's
    card, else None."""
    rotation = report.get("rotation") or parent.format_info.get("rotation")
    return {"method": report["method"], "calibration": report.get("calibration"),
            "safeguard": {str(layer): groups for layer, groups in report["safeguard"].items()},
            "safeguard_kept": report["safeguard_kept"], "lm_head": report["lm_head"], "rotation": rotation}


def quantize_step(ctx: StepContext, config: Any) -> StepResult:
    """Quantize the current model (RTN, GPTQ, AWQ or W8A8) and save it."""
    started = time.time()
    loaded, report = quantize_model(ctx, config)
    card = ModelCard(name=f"{loaded.card.name or 'model'}-{config.method}-w{config.bits}",
                     parent=str(ctx.model), parent_hash=loaded.hash, step="quantize", config=config.to_dict(),
                     format_info={"quantization": quantization_info(report, loaded.card)})
    save = export_hf if config.export_hf else save_quantized
    path = save(loaded.model, loaded.tokenizer, ctx.output, card)
    metrics = {"quantize_seconds": report["seconds"], "peak_rss_mb": report["peak_rss_mb"],
               "size_on_disk_mb": size_on_disk_mb(path), "lm_head": report["lm_head"],
               "safeguard_kept": report["safeguard_kept"], "step_seconds": round(time.time() - started, 2)}
    return StepResult(model=path, metrics=metrics, model_hash=loaded.hash)


QUANTIZE = Step("quantize", QuantizeStepConfig, quantize_step)
