"""Orchestration of structured pruning: rank units on calibration data, cut them out, refit, resize config.

Lifecycle of `prune_structured(model, config, windows)`:
1. layers: one forward pass with hooks on every decoder layer measures its block influence
   (1 - cos(input, output), importance.block_influence); the `layers` lowest are deleted.
2. taylor (optional): LM-loss gradients on the windows give |w * dL/dw| per head and channel.
3. heads and MLP channels: `sequential_calibrate` walks the remaining layers. Per layer, hooks gather
   H = X^T X of the o_proj input; heads are ranked (output energy or Taylor), the weakest removed
   (GQA-aware, importance.choose_heads), o_proj refit by least squares on the kept heads; then the
   same for down_proj's input and the MLP channels, measured after the attention was pruned.
   The calibration flow reruns the shrunk layer so the next layer sees the pruned model's activations.
4. `sync_config` writes the new uniform widths into the config, so the result is a standard HF model.
"""

from __future__ import annotations

from typing import Any

import torch

from lmopt.compress.calibration import collect_linear_inputs, sequential_calibrate
from lmopt.compress.prune import importance as imp
from lmopt.compress.prune.config import StructuredConfig
from lmopt.compress.prune.surgery import (
    decoder_layers,
    head_layout,
    remove_heads,
    remove_layers,
    remove_mlp_channels,
    slice_linear,
    sync_config,
)
from lmopt.errors import LmoptError


def block_influences(model: Any, windows: Any, batch_size: int = 8) -> list[float]:
    """Block influence of every decoder layer, token-weighted over the calibration windows."""
    layers = decoder_layers(model)
    sums = [0.0] * len(layers)

    def hook(index: int) -> Any:
        def call(_module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            sums[index] += imp.block_influence(x_in, x_out) * x_in.shape[0]
        return call

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                model(input_ids=windows[start:start + batch_size].to(model.device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [s / len(windows) for s in sums]


def taylor_scores(model: Any, windows: Any, batch_size: int = 4) -> list[dict[str, Any]]:
    """Per layer {"heads": (heads,), "channels": (inter,)} first-order Taylor importances."""
    heads, _, head_dim = head_layout(model)
    model.zero_grad(set_to_none=True)
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size].to(model.device)
        model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
    scores = []
    for layer in decoder_layers(model):
        attn, mlp = layer.self_attn, layer.mlp
        head_pairs = [(attn.q_proj.weight, attn.q_proj.weight.grad, 0),
                      (attn.o_proj.weight, attn.o_proj.weight.grad, 1)]
        chan_pairs = [(mlp.gate_proj.weight, mlp.gate_proj.weight.grad, 0),
                      (mlp.up_proj.weight, mlp.up_proj.weight.grad, 0),
                      (mlp.down_proj.weight, mlp.down_proj.weight.grad, 1)]
        scores.append({"heads": imp.taylor_importance(head_pairs, heads),
                       "channels": imp.taylor_importance(chan_pairs, mlp.down_proj.in_features)})
    model.zero_grad(set_to_none=True)
    return scores


def _input_hessian(layer: Any, inputs: Any, name: str) -> Any:
    """H = X^T X (in, in) of the input of Linear `name` in `layer` over all calibration batches."""
    acc: list[Any] = []

    def on_input(_name: str, _linear: Any, x: Any) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if not acc:
            acc.append(torch.zeros(x.shape[1], x.shape[1], device=x.device))
        acc[0].addmm_(x.t(), x)

    collect_linear_inputs(layer, inputs, on_input, names=[name])
    return acc[0]


def _replace_inputs(linear: Any, keep: list[int], hessian: Any, refit: bool) -> Any:
    """`linear` restricted to input columns `keep`, least-squares refit when asked."""
    new = slice_linear(linear, keep, 1)
    if refit:
        with torch.no_grad():
            new.weight.copy_(imp.refit_inputs(linear.weight, hessian, keep))
    return new


def _prune_heads(layer: Any, inputs: Any, config: StructuredConfig, layout: tuple, taylor: Any) -> None:
    heads, kv, head_dim = layout
    attn = layer.self_attn
    hessian = _input_hessian(layer, inputs, "self_attn.o_proj")
    scores = taylor["heads"] if taylor is not None else \
        imp.head_importance(attn.o_proj.weight, hessian, head_dim)
    keep_q, keep_kv = imp.choose_heads(scores, heads, kv, config.heads, config.head_mode)
    rows = [h * head_dim + i for h in keep_q for i in range(head_dim)]
    new_o = _replace_inputs(attn.o_proj, rows, hessian, config.refit)
    remove_heads(attn, keep_q, keep_kv, layout)
    attn.o_proj = new_o


def _prune_channels(layer: Any, inputs: Any, config: StructuredConfig, n_keep: int, taylor: Any) -> None:
    mlp = layer.mlp
    hessian = _input_hessian(layer, inputs, "mlp.down_proj")
    scores = taylor["channels"] if taylor is not None else \
        imp.channel_importance(mlp.down_proj.weight, hessian.diagonal())
    keep = imp.keep_top(scores, n_keep)
    new_down = _replace_inputs(mlp.down_proj, keep, hessian, config.refit)
    remove_mlp_channels(mlp, keep)
    mlp.down_proj = new_down


def kept_mlp_width(inter: int, fraction: float, round_to: int) -> int:
    """Channels kept per layer: (1 - fraction) * inter rounded to a multiple of `round_to` (at least one)."""
    keep = round(inter * (1 - fraction) / round_to) * round_to
    return max(round_to if round_to <= inter else 1, min(inter, keep))


def _check_head_count(model: Any, config: StructuredConfig) -> None:
    """Refuse up front a head count transformers' config validation would reject when loading."""
    heads, kv, _ = head_layout(model)
    drop = imp.heads_to_remove(config.heads, heads, kv, config.head_mode) if config.heads else 0
    left = heads - drop * (heads // kv if config.head_mode == "group" else kv)
    hidden = model.config.hidden_size
    if hidden % left:
        raise LmoptError(f"structured.heads={config.heads} ({config.head_mode}) leaves {left} of {heads} "
                         f"heads, "
                         f"which does not divide hidden_size {hidden}: plain transformers would refuse the "
                         "saved config; choose another fraction or head_mode")


def prune_structured(model: Any, config: StructuredConfig, windows: Any) -> dict[str, Any]:
    """Shrink `model` in place as `config` says; return what was removed."""
    layers = decoder_layers(model)
    _check_head_count(model, config)
    report: dict[str, Any] = {"method": "structured", "layers_before": len(layers)}
    if config.layers:
        if config.layers >= len(layers):
            raise LmoptError(f"structured.layers={config.layers}: the model has only {len(layers)} layers")
        bi = block_influences(model, windows, config.calibration.batch_size)
        drop = sorted(sorted(range(len(bi)), key=bi.__getitem__)[:config.layers])
        remove_layers(model, drop)
        report.update(block_influence=[round(b, 5) for b in bi], removed_layers=drop)
    layout = head_layout(model)
    inter = decoder_layers(model)[0].mlp.down_proj.in_features
    n_keep = kept_mlp_width(inter, config.mlp, config.round_to) if config.mlp else inter
    do_heads = config.heads > 0 and \
        imp.heads_to_remove(config.heads, layout[0], layout[1], config.head_mode) > 0
    if do_heads or n_keep < inter:
        taylor = taylor_scores(model, windows) if config.importance == "taylor" else None

        def process(i: int, layer: Any, inputs: Any) -> None:
            if do_heads:
                _prune_heads(layer, inputs, config, layout, taylor[i] if taylor else None)
            if n_keep < inter:
                _prune_channels(layer, inputs, config, n_keep, taylor[i] if taylor else None)

        sequential_calibrate(model, windows, process, batch_size=config.calibration.batch_size,
                             description="structured pruning")
    sync_config(model)
    heads, kv, _ = head_layout(model)
    report.update(layers_after=len(decoder_layers(model)), heads=[layout[0], heads], kv_heads=[layout[1], kv],
                  intermediate=[inter, n_keep])
    return report
