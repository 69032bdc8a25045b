"""`prune(model, config)`: the one entry point for every pruning method, and saving its result.

```python
from lmopt.compress.prune import prune, SparseGPTConfig, StructuredConfig
loaded = load_model("smollm2-135m-instruct", dtype="float32")
report = prune(loaded, SparseGPTConfig(sparsity=0.5, pattern="2:4"))
report = prune(loaded, StructuredConfig(mlp=0.25, heads=0.25, layers=4))
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmopt.compress.calibration import calibration_windows
from lmopt.compress.config import CalibrationConfig
from lmopt.compress.prune.config import MagnitudeConfig, PruneMethodConfig, StructuredConfig
from lmopt.compress.prune.structured import prune_structured
from lmopt.compress.prune.unstructured import prune_unstructured
from lmopt.errors import LmoptError
from lmopt.models import ModelCard, count_parameters, save_model


def _windows(config: PruneMethodConfig, calibration: Any, tokenizer: Any) -> Any:
    """Token windows (n, seq): given directly, or drawn from a CalibrationConfig / the config's own."""
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() != 2 or calibration.dtype != torch.long:
            raise LmoptError(f"calibration: expected a (n, seq) LongTensor of token ids, got "
                             f"{tuple(calibration.shape)} {calibration.dtype}")
        return calibration
    calib = calibration if isinstance(calibration, CalibrationConfig) else config.calibration
    if tokenizer is None:
        raise LmoptError(f"{config.method}: calibration text needs a tokenizer (pass a LoadedModel, "
                         "tokenizer=..., or token windows as calibration=)")
    return calibration_windows(tokenizer, calib.source, calib.n_samples, calib.seq_len, calib.seed,
                               calib.data_dir)


def prune(model: Any, config: PruneMethodConfig, calibration: Any = None,
          tokenizer: Any = None) -> dict[str, Any]:
    """Prune `model` (an HF causal LM or a LoadedModel) in place; return a report of what changed.

    calibration: None (use `config.calibration`), a `CalibrationConfig`, or a (n, seq) LongTensor of
    token ids. Magnitude pruning needs none.
    """
    if hasattr(model, "tokenizer") and hasattr(model, "model"):  # a LoadedModel
        tokenizer = tokenizer or model.tokenizer
        model = model.model
    before = count_parameters(model)
    windows = None if isinstance(config, MagnitudeConfig) else _windows(config, calibration, tokenizer)
    if isinstance(config, StructuredConfig):
        report = prune_structured(model, config, windows)
    else:
        report = prune_unstructured(model, config, windows)
    after = count_parameters(model)
    report.update(parameters_before=before, parameters_after=after,
                  parameters_removed_fraction=round(1 - after / before, 4))
    return report


def save_pruned(loaded: Any, directory: str | Path, config: PruneMethodConfig, report: dict[str, Any],
                parent: str | None = None) -> Path:
    """Save a pruned model as a standard HF directory with its lineage card (atomically)."""
    card = ModelCard(name=f"{loaded.card.name or loaded.ref}-{config.method}", parent=parent or loaded.ref,
                     parent_hash=loaded.hash, step="prune", config=config.to_dict(),
                     format_info={"pruning": report})
    return save_model(loaded.model, loaded.tokenizer, directory, card)
