"""The `prune` recipe step: load the current model, prune it, save a standard HF model with its card.

```yaml
steps:
  - prune: {method: sparsegpt, sparsity: 0.5, pattern: "2:4"}
  - prune: {method: structured, mlp: 0.25, heads: 0.33, layers: 3,
             recover: {data: pydoc-train, distill: {max_minutes: 10}}}
```
"""

from __future__ import annotations

from typing import Any

from lmopt.compress.prune.config import PruneStepConfig
from lmopt.pipeline.steps import StepContext, StepResult, register_step


def _recover(ctx: StepContext, loaded: Any, config: PruneStepConfig) -> dict[str, Any]:
    """Distill the step's input model (teacher) into the pruned `loaded` (student), in place."""
    from pathlib import Path

    from lmopt.compress.prune.recovery import recover

    recovery = config.recover.model_copy()
    if Path(recovery.data).suffix:  # a file: relative to the recipe's folder
        recovery.data = str(ctx.resolve_path(recovery.data))
    teacher = ctx.load_model(dtype="float32")
    loaded.model, metrics = recover(teacher, loaded, recovery, str(ctx.data_dir) if ctx.data_dir else None)
    return metrics


@register_step("prune", PruneStepConfig)
def prune_step(ctx: StepContext, config: PruneStepConfig) -> StepResult:
    """Prune the current model (magnitude, Wanda, SparseGPT, or structured)."""
    from lmopt.compress.prune.api import prune, save_pruned
    from lmopt.hardware import apply_threads

    apply_threads()
    method = config.method_config()
    calibration = getattr(method, "calibration", None)
    if calibration is not None and calibration.data_dir is None and ctx.data_dir is not None:
        calibration.data_dir = str(ctx.data_dir)
    # Pruning math runs in float32; "auto" would pick bf16 and store a lower-precision artifact.
    loaded = ctx.load_model(dtype="float32" if ctx.dtype == "auto" else ctx.dtype)
    report = prune(loaded, method)
    if config.recover is not None:
        report["recovery"] = _recover(ctx, loaded, config)
    save_pruned(loaded, ctx.output, method, report, parent=str(ctx.model))
    if ctx.registry is not None:
        ctx.registry.record("prune", str(ctx.model), report, config=method.to_dict())
    return StepResult(model=ctx.output, metrics=report)
