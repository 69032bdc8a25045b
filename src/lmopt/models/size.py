"""How many parameters a model has, counting quantized layers by the weights they stand for.

`model.parameters()` alone under-counts a quantized model: a `QuantLinear` keeps its packed codes,
scales and zero points as buffers, so a W4 SmolLM2 would report only its float embeddings and norms.
Selection and optimization tables compare float and quantized candidates side by side, so they count
each quantized layer as its (out_features x in_features) logical weights. `weights_bytes` is the other
side: what those weights take in memory, the one count behind every in-memory size figure.
"""

from __future__ import annotations

from typing import Any


def count_parameters(model: Any) -> int:
    """Parameters of `model`: float ones once each (a tied embedding / lm_head counts once) plus the
    logical weights of every layer that stores its weight packed (a `qweight` buffer, no `weight`
    parameter; a dense copy a kernel plan keeps is a cache, not a parameter)."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if "qweight" in module._buffers and "weight" not in module._parameters:
            total += module.in_features * module.out_features
    return total


def weights_bytes(model: Any) -> int:
    """Bytes of `model`'s parameters and buffers, each storage once (a tied embedding / lm_head, or two
    views of one buffer, count once)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.device.type, tensor.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total
