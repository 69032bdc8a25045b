"""Pruning: unstructured and N:M sparsity (magnitude, Wanda, SparseGPT) and structured shrinking.

Files: `math.py` (masks, Wanda scores, SparseGPT update), `importance.py` (structured importances,
least-squares refit), `unstructured.py` / `structured.py` (calibration flow and rewriting),
`surgery.py` (physically removing channels, heads, layers), `api.py` (`prune`, `save_pruned`),
`step.py` (recipe step `prune`), `cli.py` (`lmopt prune`), `recovery.py` (short distillation).

How to add a method: pure math in `math.py` with a toy-layer test against a reference; a config in
`config.py` (listed in METHOD_CONFIGS); orchestration in its own module called from `api.prune`;
a recipe `lmopt/recipes/prune-*.yaml` with a test that runs it; a row in BENCHMARKS.md (prune section).
"""

from __future__ import annotations

import importlib
from typing import Any

from lmopt.compress.prune.config import (
    METHOD_CONFIGS,
    MagnitudeConfig,
    PruneStepConfig,
    SparseGPTConfig,
    StructuredConfig,
    WandaConfig,
)

__all__ = ["METHOD_CONFIGS", "MagnitudeConfig", "PruneStepConfig", "SparseGPTConfig", "StructuredConfig",
           "WandaConfig", "prune", "save_pruned"]
_API = ("prune", "save_pruned")


def __getattr__(name: str) -> Any:  # lazy: the configs are read at CLI start-up; the methods load torch
    if name not in _API:
        raise AttributeError(f"module 'lmopt.compress.prune' has no attribute {name!r}")
    return getattr(importlib.import_module("lmopt.compress.prune.api"), name)
