"""Model surgery for structured pruning: physically remove MLP channels, attention heads and layers.

Works on llama-style decoders (Llama, SmolLM, Mistral, Qwen2/3: `model.model.layers[i]` with
`self_attn.{q,k,v,o}_proj` and `mlp.{gate,up,down}_proj`). Widths stay uniform across layers and the
shared `config` is updated to match, so `save_pretrained` writes a standard, smaller HF model that
plain `transformers` loads (no custom code). Grouped-query attention: query head h reads KV head
h // (heads / kv_heads), so every KV group must keep the same number of query heads.
"""

from __future__ import annotations

from typing import Any

import torch

from lmopt.errors import LmoptError


def decoder_layers(model: Any) -> Any:
    """The `nn.ModuleList` of decoder layers, or an LmoptError for an architecture we cannot rewrite."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not len(layers):
        raise LmoptError(f"{type(model).__name__}: structured pruning needs a llama-style decoder "
                         "(model.model.layers)")
    layer = layers[0]
    names = [("self_attn", p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")] + \
            [("mlp", p) for p in ("gate_proj", "up_proj", "down_proj")]
    missing = [f"{a}.{b}" for a, b in names if not hasattr(getattr(layer, a, None), b)]
    if missing:
        raise LmoptError(f"{type(model).__name__}: decoder layers lack {', '.join(missing)} "
                         "(structured pruning supports llama-style attention and gated MLPs)")
    return layers


def head_layout(model: Any) -> tuple[int, int, int]:
    """(query heads, KV heads, head_dim) of the model's attention."""
    cfg = model.config
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return heads, kv, head_dim


def slice_linear(linear: Any, index: Any, dim: int) -> Any:
    """A new nn.Linear keeping `index` along dim 0 (outputs) or 1 (inputs) of the weight (out, in)."""
    index = torch.as_tensor(index, dtype=torch.long, device=linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index)
    bias = linear.bias.detach() if linear.bias is not None else None
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index)
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                          device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def remove_mlp_channels(mlp: Any, keep: Any) -> None:
    """Keep intermediate channels `keep` (sorted indices): gate/up rows, down columns."""
    mlp.gate_proj = slice_linear(mlp.gate_proj, keep, 0)
    mlp.up_proj = slice_linear(mlp.up_proj, keep, 0)
    mlp.down_proj = slice_linear(mlp.down_proj, keep, 1)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(keep)


def _head_rows(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + i for h in heads for i in range(head_dim)]


def remove_heads(attn: Any, keep_q: list[int], keep_kv: list[int], layout: tuple[int, int, int]) -> None:
    """Keep query heads `keep_q` and KV heads `keep_kv` (sorted); every kept query head's group is kept.

    Raises ValueError when the result breaks the GQA layout (uneven heads per kept group).
    """
    heads, kv, head_dim = layout
    rep = heads // kv
    groups = [sorted(h for h in keep_q if h // rep == g) for g in keep_kv]
    if any(h // rep not in keep_kv for h in keep_q) or len({len(g) for g in groups}) != 1 or not groups[0]:
        raise ValueError(f"query heads {keep_q} / KV heads {keep_kv} do not form even GQA groups")
    q_rows = _head_rows([h for g in groups for h in g], head_dim)
    kv_rows = _head_rows(list(keep_kv), head_dim)
    attn.q_proj = slice_linear(attn.q_proj, q_rows, 0)
    attn.k_proj = slice_linear(attn.k_proj, kv_rows, 0)
    attn.v_proj = slice_linear(attn.v_proj, kv_rows, 0)
    attn.o_proj = slice_linear(attn.o_proj, q_rows, 1)
    attn.head_dim = head_dim
    attn.num_key_value_groups = len(groups[0])
    for name in ("num_heads", "num_attention_heads"):
        if hasattr(attn, name):
            setattr(attn, name, len(q_rows) // head_dim)
    if hasattr(attn, "num_key_value_heads"):
        attn.num_key_value_heads = len(keep_kv)


def remove_layers(model: Any, drop: list[int]) -> None:
    """Delete decoder layers `drop` and renumber the rest (the KV cache indexes layers by layer_idx)."""
    layers = decoder_layers(model)
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    if not kept:
        raise LmoptError("structured pruning: cannot remove every decoder layer")
    for i, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i
    model.model.layers = torch.nn.ModuleList(kept)
    cfg = model.config
    cfg.num_hidden_layers = len(kept)
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in set(drop)]


def sync_config(model: Any) -> None:
    """Write the layers' (uniform) widths into `model.config`; raise if the layers disagree."""
    layers = decoder_layers(model)
    _, _, head_dim = head_layout(model)
    widths = {(layer.mlp.down_proj.in_features, layer.self_attn.q_proj.out_features // head_dim,
               layer.self_attn.k_proj.out_features // head_dim) for layer in layers}
    if len(widths) != 1:
        raise ValueError(f"layers have different widths {sorted(widths)}: plain transformers cannot load it")
    (inter, heads, kv), = widths
    cfg = model.config
    cfg.head_dim = head_dim  # explicit: hidden_size / heads no longer gives it
    cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads = inter, heads, kv
