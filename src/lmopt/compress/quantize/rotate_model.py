"""Fuse orthogonal rotations into a llama-style model: the result is an ordinary HF model, same logits.

What is rotated (the math is in rotate.py; all weights are (out, in) and transformed in float64):
1. untie the lm_head from the embedding (they differ after step 2), then fold every RMSNorm's weight
   into the Linears it feeds (q/k/v, gate/up, lm_head: W diag(w)) and set the norm weights to 1; an
   RMSNorm without weight commutes with any orthogonal Q, since rms(x Q) = rms(x);
2. the residual stream by Q (hidden x hidden): embedding E Q; every Linear reading the stream
   (q/k/v/gate/up, lm_head) W Q; every Linear writing to it (o_proj, down_proj) Q^T W, bias b Q;
3. attention values and outputs per head by R (head_dim x head_dim): v_proj's rows R^T W per key/value
   head, o_proj's columns W R per attention head (with grouped-query attention every query head reads
   its key/value head's v R, so one R for all heads keeps this exact). RoPE touches q/k only.
Not done (they would need work at run time, not an ordinary model): QuaRot's online Hadamard before
down_proj and on queries/keys. The float model computes the same function up to fp32 rounding;
`rotate_llama` returns what it did, for the card.

Follow it with GPTQ, not RTN. SmolLM2-135M, W4 g128, WikiText-2 (4 windows of 1,024) against fp32:
GPTQ x1.24 -> rotate+GPTQ x1.11, but RTN x1.39 -> rotate+RTN x2.07 (BENCHMARKS.md). Its residual stream has massive
dimensions (507 and 247: about half of every token's normalized energy) whose norm weights are ~1e-3,
so they hardly reach the Linears; after folding and rotating they reach every input column, and
rounding errors that RTN does not steer away from them cost output error. GPTQ's Hessian sees those
directions and keeps its errors out of them.
"""

from __future__ import annotations

from typing import Any

import torch

from lmopt.compress.calibration import decoder_layers
from lmopt.compress.quantize import rotate as rot
from lmopt.errors import LmoptError

SUPPORTED = ("llama", "mistral", "qwen2")
"""Model types with this layout: pre-norm RMSNorm (weight only) before attention, MLP and lm_head."""


def _check(model: Any) -> None:
    kind = getattr(model.config, "model_type", type(model).__name__)
    if kind not in SUPPORTED:
        raise LmoptError(f"rotate: model type '{kind}' is not supported (supported: {', '.join(SUPPORTED)})")
    for layer in decoder_layers(model):
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if getattr(norm, "bias", None) is not None:
                raise LmoptError("rotate: norms with a bias are not supported (RMSNorm expected)")


def _set(linear: torch.nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    linear.weight.data = weight.to(linear.weight.dtype).contiguous()
    if bias is not None:
        linear.bias.data = bias.to(linear.bias.dtype)


def _fold_norm(norm: Any, linears: list[torch.nn.Linear]) -> None:
    """W diag(w) for each Linear fed by `norm`; the norm's weight becomes 1."""
    w = norm.weight.data.double()
    for linear in linears:
        _set(linear, linear.weight.data.double() * w.unsqueeze(0))
    norm.weight.data.fill_(1.0)


def _untie(model: Any) -> bool:
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is not embed.weight and head.weight.data_ptr() != embed.weight.data_ptr():
        return False
    head.weight = torch.nn.Parameter(embed.weight.data.clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", lambda: model.config)()
    text_config.tie_word_embeddings = False
    return True


def _rotate_layer(layer: Any, q: torch.Tensor, r: torch.Tensor) -> None:
    attn, mlp = layer.self_attn, layer.mlp
    for linear in (attn.q_proj, attn.k_proj, mlp.gate_proj, mlp.up_proj):
        _set(linear, rot.rotate_input(linear.weight.data.double(), q))
    v = rot.rotate_input(attn.v_proj.weight.data.double(), q)
    v_bias = attn.v_proj.bias
    _set(attn.v_proj, rot.rotate_heads_output(v, r),
         None if v_bias is None else rot.rotate_heads_output(v_bias.data.double().unsqueeze(1), r).squeeze(1))
    o = rot.rotate_heads_input(attn.o_proj.weight.data.double(), r)
    for linear, weight in ((attn.o_proj, o), (mlp.down_proj, mlp.down_proj.weight.data.double())):
        _set(linear, rot.rotate_output(weight, q), None if linear.bias is None else linear.bias.data.double() @ q)


def rotate_llama(model: Any, seed: int = 0, construction: rot.Construction = "auto") -> dict[str, Any]:
    """Rotate `model` in place (see the module docstring); returns {hidden, head, seed, untied}."""
    _check(model)
    config = model.config
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q = rot.rotation(hidden, seed, construction)
    r = rot.rotation(head_dim, seed + 1, construction)
    with torch.no_grad():
        untied = _untie(model)
        layers = decoder_layers(model)
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            _fold_norm(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
            _fold_norm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        head = model.get_output_embeddings()
        _fold_norm(model.model.norm, [head])
        embed = model.get_input_embeddings()
        embed.weight.data = (embed.weight.data.double() @ q).to(embed.weight.dtype)
        for layer in layers:
            _rotate_layer(layer, q, r)
        _set(head, rot.rotate_input(head.weight.data.double(), q))
    return {"hidden": rot.describe(hidden, construction), "head": rot.describe(head_dim, construction),
            "seed": seed, "untied_embedding": untied}
