"""The `prune` recipe step: load the current model, prune it, save a standard HF model with its card.

```yaml
steps:
  - prune: {method: sparsegpt, sparsity: 0.5, pattern: "2:4"}
  - prune: {method: structured, mlp: 0.42, layers: 4,
            recover: {data: pydoc-train, distill: {max_minutes: 10}}}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmopt.compress.calibration_data import with_step_paths
from lmopt.compress.prune.api import prune, save_pruned
from lmopt.compress.prune.config import PruneMethodConfig, PruneStepConfig
from lmopt.compress.prune.recovery import recover
from lmopt.hardware import apply_threads
from lmopt.models import load_model
from lmopt.step import Step, StepContext, StepResult


def _recover(ctx: StepContext, loaded: Any, config: PruneMethodConfig) -> dict[str, Any]:
    """Distill the step's input model (teacher) into the pruned `loaded` (student), in place."""
    recovery = config.recover.model_copy()
    if Path(recovery.data).suffix:  # a file: relative to the recipe's folder
        recovery.data = str(ctx.resolve_path(recovery.data))
    teacher = load_model(ctx.require_model(), dtype="float32")
    loaded.model, metrics = recover(teacher, loaded, recovery, str(ctx.data_dir) if ctx.data_dir else None)
    return metrics


def prune_step(ctx: StepContext, config: PruneMethodConfig) -> StepResult:
    """Prune the current model (magnitude, Wanda, SparseGPT, or structured)."""
    apply_threads()
    config = with_step_paths(config, ctx)  # a relative calibration file: from the recipe's folder
    # Pruning math runs in float32; "auto" would pick bf16 and store a lower-precision artifact.
    loaded = load_model(ctx.require_model(), dtype="float32" if ctx.dtype == "auto" else ctx.dtype)
    report = prune(loaded, config)
    if getattr(config, "recover", None) is not None:
        report["recovery"] = _recover(ctx, loaded, config)
    save_pruned(loaded, ctx.output, config, report, parent=str(ctx.model))
    return StepResult(model=ctx.output, metrics=report, model_hash=loaded.hash)


PRUNE = Step("prune", PruneStepConfig, prune_step)
