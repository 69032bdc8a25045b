"""Equivalent rescaling of a decoder layer (AWQ, SmoothQuant): which Linears share an input and where
the inverse scale can be folded so the float model computes exactly the same function.

For Linears fed by `prev` (an RMSNorm, or a Linear whose output reaches them elementwise), dividing
prev's output channel j by s_j and multiplying the Linears' input column j by s_j changes nothing in
exact arithmetic, but changes what rounding the weights loses (AWQ) or how large activations are
(SmoothQuant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmopt.errors import LmoptError


@dataclass
class SmoothGroup:
    """Linears sharing one input, and the module whose output that input is (scaled by 1/s)."""

    name: str
    prev: Any
    linears: dict[str, Any]


def smooth_groups(layer: Any) -> list[SmoothGroup]:
    """The foldable groups of a llama-style decoder layer (q/k/v, gate/up, down, and o when
    v_proj's outputs map one to one onto o_proj's inputs, i.e. without grouped-query attention)."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    needed = [(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"),
              (mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj"),
              (layer, "input_layernorm"), (layer, "post_attention_layernorm")]
    if any(owner is None or not hasattr(owner, name) for owner, name in needed):
        raise LmoptError(f"{type(layer).__name__}: AWQ/SmoothQuant support llama-style layers "
                         "(self_attn.q/k/v/o_proj, mlp.gate/up/down_proj, input/post_attention_layernorm)")
    groups = [
        SmoothGroup("qkv", layer.input_layernorm, {f"self_attn.{n}": getattr(attn, n)
                                                   for n in ("q_proj", "k_proj", "v_proj")}),
        SmoothGroup("gate_up", layer.post_attention_layernorm,
                    {"mlp.gate_proj": mlp.gate_proj, "mlp.up_proj": mlp.up_proj}),
        SmoothGroup("down", mlp.up_proj, {"mlp.down_proj": mlp.down_proj}),
    ]
    if attn.v_proj.out_features == attn.o_proj.in_features:
        groups.insert(1, SmoothGroup("o", attn.v_proj, {"self_attn.o_proj": attn.o_proj}))
    return groups


def fold_scales(group: SmoothGroup, scales: torch.Tensor) -> None:
    """prev's output channel j /= s_j; every Linear's input column j *= s_j (in place)."""
    s = scales.to(group.prev.weight.dtype)
    with torch.no_grad():
        if isinstance(group.prev, torch.nn.Linear):
            group.prev.weight.div_(s.unsqueeze(1))
            if group.prev.bias is not None:
                group.prev.bias.div_(s)
        else:  # a norm with an elementwise weight (K,)
            group.prev.weight.div_(s)
            if getattr(group.prev, "bias", None) is not None:
                group.prev.bias.div_(s)
        for linear in group.linears.values():
            linear.weight.mul_(s.unsqueeze(0))
