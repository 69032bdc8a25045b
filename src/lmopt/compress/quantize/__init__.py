"""Quantization: RTN, GPTQ, AWQ, W8A8 and rotate+GPTQ with packed low-bit storage and fast CPU kernels.

```python
from lmopt.compress.quantize import GPTQConfig, prepare_runtime, quantize, save_quantized
report = quantize(model, GPTQConfig(bits=4, group_size=128), tokenizer=tokenizer)
prepare_runtime(model)                       # int4/int8 kernels where they apply
save_quantized(model, tokenizer, "out/w4")   # reloads with lmopt.models.load_model
```

Files: `algorithms.py` pure tensor math (grids, RTN, GPTQ, AWQ, SmoothQuant); `apply.py` the
calibration flow and model rewriting; `safeguard.py` held-out windows and the per-group choice
against RTN; `rotate.py` Hadamard/orthogonal matrices, `rotate_model.py` fusing them into a llama
model, `rotate_step.py` the `rotate` step; `smoothing.py` equivalent rescaling of a layer; `runtime.py`
`QuantLinear`; `kernels.py` its backends; `packing.py` bit packing; `storage.py` the saved format
and HF export; `config.py` typed configs; `step.py` the recipe step (its CLI verb, `lmopt quantize`, is generated in
`lmopt/cli/steps.py`).

How to add a method: a pure function in algorithms.py with a toy-layer test against RTN; a
per-layer function in apply.py registered in LAYER_METHODS; a config in config.py added to
METHOD_CONFIGS; a recipe in lmopt/recipes/; a row in benchmarks/quantize_quality.py.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "quantize": "apply", "prepare_runtime": "apply", "QuantLinear": "runtime",
    "save_quantized": "storage", "load_quantized": "storage", "export_hf": "storage",
    "RTNConfig": "config", "GPTQConfig": "config", "AWQConfig": "config", "W8A8Config": "config",
    "WeightQuantConfig": "config", "RotateConfig": "config", "RotateGPTQConfig": "config",
    "rotate_llama": "rotate_model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import torch
    if name not in _EXPORTS:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"lmopt.compress.quantize.{_EXPORTS[name]}"), name)
