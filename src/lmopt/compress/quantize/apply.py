"""`quantize(model, config)`: run a method over a model and swap its Linears for `QuantLinear`s.

Lifecycle of a calibrated method (GPTQ, AWQ, W8A8):
1. calibration windows are drawn (or given) and the first decoder layer's inputs captured;
2. per decoder layer (`lmopt.compress.calibration.sequential_calibrate`): hooks gather what the
   method needs from each Linear's inputs (Hessian, mean |x|, max |x|), the layer is rescaled
   and/or quantized, its Linears are replaced, and its outputs (now quantized) feed the next layer;
3. the lm_head is quantized last (round-to-nearest per channel at 8 bits; GPTQ on the final hidden
   states otherwise); when the embedding is tied to it, the embedding becomes its de-quantized copy.
The model ends in the exact `dequant` backend; `prepare_runtime` switches to fast kernels.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lmopt.compress.calibration import (
    LayerInputs,
    calibration_windows,
    collect_linear_inputs,
    decoder_layers,
    linear_modules,
    sequential_calibrate,
)
from lmopt.compress.quantize import algorithms as alg
from lmopt.compress.quantize.config import AWQConfig, GPTQConfig, W8A8Config, WeightQuantConfig
from lmopt.compress.quantize.runtime import QuantLinear
from lmopt.compress.quantize.smoothing import fold_scales, smooth_groups
from lmopt.errors import LmoptError


def to_quant_linear(linear: torch.nn.Linear, qw: alg.QuantizedWeight, act_quant: bool = False) -> QuantLinear:
    return QuantLinear.from_codes(qw.q, qw.scale, qw.zero, qw.bits, qw.group_size, linear.bias, act_quant)


def _set_module(root: Any, name: str, module: Any) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _quantize_layer_rtn(layer: Any, config: WeightQuantConfig, act_quant: bool = False) -> None:
    for name, linear in linear_modules(layer, config.skip).items():
        qw = alg.rtn_quantize(linear.weight.data, config.bits, config.group_size, config.sym, config.clip)
        _set_module(layer, name, to_quant_linear(linear, qw, act_quant))


def _gptq_layer(layer: Any, inputs: LayerInputs, config: GPTQConfig) -> dict[str, float]:
    """Hessians from one pass over the inputs, then GPTQ. Linears fed the same tensor (q/k/v,
    gate/up) share one Hessian and are quantized as one stacked matrix (fewer column steps)."""
    hessians: dict[str, list] = {}  # owner name -> [H, n_rows]
    feeds: dict[str, str] = {}  # linear name -> owner: the first Linear fed the same tensor
    first_inputs: dict[str, torch.Tensor] = {}  # first-batch input per owner, kept alive on purpose:
    # sharing is decided by tensor identity, and a freed tensor's address (data_ptr) is reused by
    # later activations, which once made gate/up borrow q/k/v's Hessian.

    def on_input(name: str, _module: Any, x: torch.Tensor) -> None:
        if name not in feeds:
            feeds[name] = next((owner for owner, t in first_inputs.items() if t is x), name)
            first_inputs.setdefault(feeds[name], x)
        if feeds[name] == name:  # accumulate once per shared input
            h, n = hessians.get(name, (None, 0))
            hessians[name] = list(alg.accumulate_hessian(h, n, x))

    collect_linear_inputs(layer, inputs, on_input, names=list(linear_modules(layer, config.skip)))
    first_inputs.clear()
    errors = {}
    for owner, (hessian, _n) in hessians.items():
        names = [name for name, key in feeds.items() if key == owner]
        errors["+".join(names)] = _gptq_replace(layer, names, hessian, config)
    return errors


def _gptq_replace(layer: Any, names: list[str], hessian: torch.Tensor, config: WeightQuantConfig) -> float:
    """GPTQ the named Linears (fed the same input, with this Hessian) as one stacked matrix and swap
    in QuantLinears; returns the mean row error d H d^T. GPTQ settings come from `config` when it is
    a GPTQConfig, else GPTQConfig's defaults (AWQ with gptq rounding)."""
    gptq = config if isinstance(config, GPTQConfig) else GPTQConfig()
    linears = [layer.get_submodule(name) for name in names]
    stacked = torch.cat([lin.weight.data for lin in linears])  # (sum N, K)
    qw = alg.gptq_quantize(stacked, hessian, config.bits, config.group_size, config.sym, gptq.block_size,
                           gptq.damp, gptq.act_order, config.clip)
    delta = qw.dequantize() - stacked.float()
    start = 0
    for name, linear in zip(names, linears, strict=True):
        rows = slice(start, start + linear.out_features)
        start += linear.out_features
        part = alg.QuantizedWeight(qw.q[rows], qw.scale[rows], qw.zero[rows], qw.bits, qw.group_size)
        _set_module(layer, name, to_quant_linear(linear, part))
    return float((delta @ hessian.float() * delta).sum() / delta.shape[0])


def _input_stats(layer: Any, inputs: LayerInputs, names: list[str]) -> dict[str, tuple]:
    """(mean |x| (K,), Hessian (K, K)) of the inputs of each named Linear, over all tokens."""
    stats: dict[str, list] = {}

    def on_input(name: str, _module: Any, x: torch.Tensor) -> None:
        abs_sum, h, n = stats.get(name, (0.0, None, 0))
        h, total = alg.accumulate_hessian(h, n, x)
        stats[name] = [abs_sum + x.reshape(-1, x.shape[-1]).abs().float().sum(0), h, total]

    collect_linear_inputs(layer, inputs, on_input, names=names)
    return {name: (abs_sum / n, h) for name, (abs_sum, h, n) in stats.items()}


def _awq_layer(layer: Any, inputs: LayerInputs, config: AWQConfig) -> dict[str, float]:
    groups = smooth_groups(layer)
    firsts = [next(iter(g.linears)) for g in groups]
    grouped = {name for g in groups for name in g.linears}
    # with GPTQ rounding, Linears outside every group (o_proj under grouped-query attention) need
    # their own Hessian too
    others = [n for n in linear_modules(layer, config.skip) if n not in grouped and config.rounding == "gptq"]
    stats = _input_stats(layer, inputs, firsts + others)  # all from the float layer
    losses, folded = {}, []
    for group, first in zip(groups, firsts, strict=True):
        if any(any(s in n for s in config.skip) for n in group.linears):
            continue
        weights = [lin.weight.data for lin in group.linears.values()]
        scales, losses[group.name] = alg.awq_search_scales(*stats[first], weights, config.bits,
                                                           config.group_size, config.sym, config.grid)
        fold_scales(group, scales)
        folded.append((group, first, scales))
    # Rounding only after every fold: a later group's fold rescales an earlier group's Linear (the
    # down group divides up_proj's rows), which must still be a float Linear then.
    if config.rounding == "rtn":
        _quantize_layer_rtn(layer, config)
        return losses
    for group, first, scales in folded:  # the group's inputs are now x / s: Hessian H / (s s^T)
        hessian = stats[first][1] / (scales[:, None] * scales[None, :])
        losses[group.name] = _gptq_replace(layer, list(group.linears), hessian, config)
    for name in others:
        losses[name] = _gptq_replace(layer, [name], stats[name][1], config)
    return losses


def _w8a8_layer(layer: Any, inputs: LayerInputs, config: W8A8Config) -> dict[str, float]:
    if config.smoothquant:
        groups = smooth_groups(layer)
        absmax: dict[str, torch.Tensor] = {}

        def on_input(name: str, _module: Any, x: torch.Tensor) -> None:
            m = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
            absmax[name] = torch.maximum(absmax[name], m) if name in absmax else m

        firsts = [next(iter(g.linears)) for g in groups]
        collect_linear_inputs(layer, inputs, on_input, names=firsts)
        for group, first in zip(groups, firsts, strict=True):
            weights = [lin.weight.data for lin in group.linears.values()]
            fold_scales(group, alg.smoothquant_scales(absmax[first], weights, config.alpha))
    _quantize_layer_rtn(layer, config, act_quant=True)
    return {}


LAYER_METHODS = {"gptq": _gptq_layer, "awq": _awq_layer, "w8a8": _w8a8_layer}


def _windows(config: WeightQuantConfig, windows: torch.Tensor | None, tokenizer: Any) -> torch.Tensor:
    if windows is not None:
        return windows
    calibration = config.calibration
    if tokenizer is None:
        raise LmoptError("quantize: calibrated methods need `tokenizer=` (or `windows=` token ids)")
    return calibration_windows(tokenizer, calibration.source, calibration.n_samples, calibration.seq_len,
                               calibration.seed, calibration.data_dir)


def quantize(model: Any, config: WeightQuantConfig, windows: torch.Tensor | None = None,
             tokenizer: Any = None) -> dict[str, Any]:
    """Quantize `model` in place (see the module docstring); returns a report of what was done.

    Calibrated methods read text as `config.calibration` says (default: 128 x 512 tokens of
    pydoc-train; needs `tokenizer`), unless `windows`, a (n_samples, seq_len) tensor of token ids, is
    given. RTN needs neither.
    """
    started = time.time()
    model.eval()
    method = getattr(config, "method", "rtn")
    report: dict[str, Any] = {"method": method, "layers": {}}
    final: LayerInputs | None = None
    with torch.no_grad():
        if method == "rtn":
            for layer in decoder_layers(model):
                _quantize_layer_rtn(layer, config)
        else:
            step = LAYER_METHODS[method]
            windows = _windows(config, windows, tokenizer)
            report["calibration_tokens"] = int(windows.numel())

            def process(index: int, layer: Any, inputs: LayerInputs) -> None:
                report["layers"][index] = step(layer, inputs, config)

            final = sequential_calibrate(model, windows, process, config.calibration.batch_size,
                                         f"{method} per layer")
        report["lm_head"] = _quantize_lm_head(model, config, final)
    report["seconds"] = round(time.time() - started, 2)
    return report


def _quantize_lm_head(model: Any, config: WeightQuantConfig, final: LayerInputs | None) -> str:
    """Quantize the lm_head (see the module docstring); returns what was done."""
    head = model.get_output_embeddings()
    if config.lm_head_bits is None or not isinstance(head, torch.nn.Linear):
        return "kept"
    embed = model.get_input_embeddings()
    tied = embed.weight is head.weight
    bits = config.lm_head_bits
    group = 0 if bits == 8 else config.group_size
    if bits < 8 and final is not None and isinstance(config, GPTQConfig):
        norm = getattr(getattr(model, "model", model), "norm", None)
        h, n = None, 0
        for hidden in final.hidden:
            h, n = alg.accumulate_hessian(h, n, norm(hidden) if norm is not None else hidden)
        qw = alg.gptq_quantize(head.weight.data, h, bits, group, config.sym, config.block_size, config.damp,
                               config.act_order, config.clip)
        how = f"gptq int{bits}"
    else:
        sym, clip = (config.sym, config.clip) if bits < 8 else (False, 0.0)
        qw = alg.rtn_quantize(head.weight.data, bits, group, sym, clip)
        how = f"rtn int{bits}"
    quant = to_quant_linear(head, qw)
    _set_module(model, next(n for n, m in model.named_modules() if m is head), quant)
    if tied:  # the input embedding stays the same tensor as what the lm_head computes with
        embed.weight = torch.nn.Parameter(quant.dequantize(embed.weight.dtype), requires_grad=False)
        model.config.tie_word_embeddings = False
        model._lmopt_tied_head = True  # storage saves the lm_head only; export re-ties
        how += ", tied embedding = its de-quantized copy"
    return how


def quant_layers(model: Any) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def prepare_runtime(model: Any, backend: str = "auto", dense_rows: int = 32,
                    cache_dense: bool = False) -> dict[str, int]:
    """Switch every QuantLinear to `backend` (see runtime.py); returns {backend: count}."""
    used: dict[str, int] = {}
    for layer in quant_layers(model).values():
        chosen = layer.prepare(backend, dense_rows, cache_dense)
        used[chosen] = used.get(chosen, 0) + 1
    return used
