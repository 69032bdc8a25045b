"""`quantize(model, config)`: run a method over a model and swap its Linears for `QuantLinear`s.

Lifecycle of a calibrated method (GPTQ, AWQ, W8A8, rotate+GPTQ):
0. rotate+GPTQ first fuses a rotation into the float model (rotate_model.py);
1. calibration windows are drawn (default: the `mix`, calibration_data.py) or given, 1 in 8 more held
   out for the safeguard (safeguard.py), and the first decoder layer's inputs captured;
2. per decoder layer (`safeguard.sequential_with_holdout`): hooks gather what the method needs from
   each Linear's inputs (Hessian, mean |x|, max |x|), the layer is rescaled and/or quantized, each
   group of Linears keeping the method's rounding or RTN's by held-out error, its Linears are
   replaced, and its outputs (now quantized) feed the next layer;
3. the lm_head is quantized last (round-to-nearest per channel at 8 bits; GPTQ on the final hidden
   states otherwise); when the embedding is tied to it, the embedding becomes its de-quantized copy.
The model ends in the exact `dequant` backend; `prepare_runtime` switches to fast kernels.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lmopt.compress.calibration import LayerInputs, collect_linear_inputs, decoder_layers, linear_modules
from lmopt.compress.quantize import algorithms as alg
from lmopt.compress.quantize import safeguard as sg
from lmopt.compress.quantize.config import AWQConfig, GPTQConfig, RotateGPTQConfig, W8A8Config, WeightQuantConfig
from lmopt.compress.quantize.rotate_model import rotate_llama
from lmopt.compress.quantize.runtime import QuantLinear
from lmopt.compress.quantize.smoothing import fold_scales, smooth_groups


def to_quant_linear(linear: torch.nn.Linear, qw: alg.QuantizedWeight, act_quant: bool = False) -> QuantLinear:
    return QuantLinear.from_codes(qw.q, qw.scale, qw.zero, qw.bits, qw.group_size, linear.bias, act_quant)


def set_module(root: Any, name: str, module: Any) -> None:
    """Put `module` at the dotted path `name` under `root` (e.g. a QuantLinear in place of a Linear)."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _quantize_layer_rtn(layer: Any, config: WeightQuantConfig, act_quant: bool = False) -> None:
    for name, linear in linear_modules(layer, config.skip).items():
        qw = alg.rtn_quantize(linear.weight.data, config.bits, config.group_size, config.sym, config.clip)
        set_module(layer, name, to_quant_linear(linear, qw, act_quant))


def _shared_hessians(layer: Any, inputs: LayerInputs, config: WeightQuantConfig) -> tuple[dict, dict]:
    """Hessians from one pass over the inputs, one per input tensor: Linears fed the same tensor (q/k/v,
    gate/up) share it. Returns ({owner: H (K, K)}, {owner: [names fed that tensor]})."""
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
    groups = {owner: [name for name, key in feeds.items() if key == owner] for owner in hessians}
    return {owner: h for owner, (h, _n) in hessians.items()}, groups


def _gptq_layer(layer: Any, inputs: LayerInputs, config: GPTQConfig,
                held: LayerInputs | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """GPTQ each group of Linears fed one input as one stacked matrix (fewer column steps); with
    `held`, keep RTN instead where it has the smaller held-out error (safeguard.py).
    Returns ({group: calibration error}, {group: safeguard choice})."""
    hessians, groups = _shared_hessians(layer, inputs, config)
    held_hessians = sg.input_hessians(layer, held, list(groups)) if held is not None else {}
    errors, choices = {}, {}
    for owner, names in groups.items():
        key = sg.group_name(names)
        stacked, qw, refit = _gptq_stacked(layer, names, hessians[owner], config, held_hessians.get(owner))
        errors[key] = alg.hessian_error(stacked, qw.dequantize(), hessians[owner])
        if owner in held_hessians:
            rtn = alg.rtn_quantize(stacked, config.bits, config.group_size, config.sym, config.clip)
            kept, choices[key] = sg.pick(stacked, {"gptq": qw.dequantize(), "rtn": rtn.dequantize()},
                                         held_hessians[owner])
            qw = rtn if kept == "rtn" else qw
            if refit is not None:
                choices[key]["refit"] = refit
        _swap_stacked(layer, names, qw)
    return errors, choices


def _gptq_stacked(layer: Any, names: list[str], hessian: torch.Tensor, config: WeightQuantConfig,
                  held: torch.Tensor | None = None) -> tuple[torch.Tensor, alg.QuantizedWeight, bool | None]:
    """GPTQ of the named Linears (fed the same input, with this Hessian) stacked into one (sum N, K)
    matrix, then the scale refit (`_refit_checked`, with the held-out Hessian `held` if given).
    Returns (stacked float weight, codes, whether the refit was kept or None when it is off). GPTQ
    settings come from `config` when it is a GPTQConfig, else GPTQConfig's defaults (AWQ with gptq
    rounding gets the same GPTQ as method gptq)."""
    gptq = config if isinstance(config, GPTQConfig) else GPTQConfig(sym=config.sym)
    stacked = torch.cat([layer.get_submodule(name).weight.data for name in names]).float()
    qw = alg.gptq_quantize(stacked, hessian, config.bits, config.group_size, config.sym, gptq.block_size,
                           gptq.damp, gptq.act_order, config.clip)
    if not gptq.refit_scales:
        return stacked, qw, None
    qw, refit = _refit_checked(stacked, qw, hessian, held, gptq)
    return stacked, qw, refit


def _refit_checked(weight: torch.Tensor, qw: alg.QuantizedWeight, hessian: torch.Tensor,
                   held: torch.Tensor | None, config: GPTQConfig) -> tuple[alg.QuantizedWeight, bool]:
    """GPTQ's codes with least-squares scales and `config.refit_rounds` (`alg.refine_gptq`), unless the
    held-out Hessian `held` says plain GPTQ was better. Returns (weight codes, whether the refit was kept)."""
    refit = alg.refine_gptq(weight, hessian, qw, config.refit_rounds, sym=config.sym,
                            block_size=config.block_size, damp=config.damp, act_order=config.act_order)
    return _held_out_better(weight, qw, refit, held)


def _held_out_better(weight: torch.Tensor, base: alg.QuantizedWeight, refit: alg.QuantizedWeight,
                     held: torch.Tensor | None) -> tuple[alg.QuantizedWeight, bool]:
    """(`refit`, True) unless the held-out Hessian `held` gives `base` the smaller error: (`base`, False)."""
    if held is not None and alg.hessian_error(weight, refit.dequantize(), held) > \
            alg.hessian_error(weight, base.dequantize(), held):
        return base, False
    return refit, True


def _swap_stacked(layer: Any, names: list[str], qw: alg.QuantizedWeight) -> None:
    """Replace the named Linears by QuantLinears holding their rows of the stacked codes `qw`."""
    start = 0
    for name in names:
        linear = layer.get_submodule(name)
        rows = slice(start, start + linear.out_features)
        start += linear.out_features
        part = alg.QuantizedWeight(qw.q[rows], qw.scale[rows], qw.zero[rows], qw.bits, qw.group_size)
        set_module(layer, name, to_quant_linear(linear, part))


def _input_stats(layer: Any, inputs: LayerInputs, names: list[str]) -> dict[str, tuple]:
    """(mean |x| (K,), Hessian (K, K)) of the inputs of each named Linear, over all tokens."""
    stats: dict[str, list] = {}

    def on_input(name: str, _module: Any, x: torch.Tensor) -> None:
        abs_sum, h, n = stats.get(name, (0.0, None, 0))
        h, total = alg.accumulate_hessian(h, n, x)
        stats[name] = [abs_sum + x.reshape(-1, x.shape[-1]).abs().float().sum(0), h, total]

    collect_linear_inputs(layer, inputs, on_input, names=names)
    return {name: (abs_sum / n, h) for name, (abs_sum, h, n) in stats.items()}


def _awq_layer(layer: Any, inputs: LayerInputs, config: AWQConfig,
               held: LayerInputs | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """AWQ scales per group, folded; then rounding (to nearest or GPTQ). With `held`, each group keeps
    the AWQ result or plain RTN of its unscaled weights, whichever has the smaller held-out error."""
    groups = smooth_groups(layer)
    firsts = [next(iter(g.linears)) for g in groups]
    grouped = {name for g in groups for name in g.linears}
    # with GPTQ rounding, Linears outside every group (o_proj under grouped-query attention) need
    # their own Hessian too
    others = [n for n in linear_modules(layer, config.skip) if n not in grouped and config.rounding == "gptq"]
    stats = _input_stats(layer, inputs, firsts + others)  # all from the float layer
    held_hessians = sg.input_hessians(layer, held, firsts + others) if held is not None else {}
    losses, folded, choices = {}, [], {}
    for group, first in zip(groups, firsts, strict=True):
        if any(any(s in n for s in config.skip) for n in group.linears):
            continue
        weights = [lin.weight.data for lin in group.linears.values()]
        scales, losses[group.name] = alg.awq_search_scales(*stats[first], weights, config.bits,
                                                           config.group_size, config.sym, config.grid)
        fold_scales(group, scales)
        folded.append((group, first, scales))
    # Rounding after every fold, last group first: a group's fold rescales the previous group's Linear
    # (down divides up_proj's rows, o divides v_proj's), which must be final, and unfolded again if
    # the safeguard drops that fold, before the previous group is rounded.
    for group, first, scales in reversed(folded):
        names = list(group.linears)
        # the inputs are now x / s: Hessians H / (s s^T)
        held_hessian, gptq = held_hessians.get(first), config.rounding == "gptq"
        rescale = scales[:, None] * scales[None, :]
        qw = _round_stacked(layer, names, stats[first][1] / rescale if gptq else None, config,
                            held_hessian / rescale if gptq and held_hessian is not None else None)
        scaled = torch.cat([layer.get_submodule(n).weight.data for n in names]).float()  # (out, in), folded
        if not gptq and config.refit_scales:  # least-squares scales for RTN's codes
            refit = alg.refit_scales(scaled, qw, stats[first][1] / rescale)
            qw, _ = _held_out_better(scaled, qw, refit, None if held_hessian is None else held_hessian / rescale)
        if held_hessian is not None:
            current = scaled / scales
            rtn = alg.rtn_quantize(current, config.bits, config.group_size, config.sym, config.clip)
            kept, choices[group.name] = sg.pick(current, {"awq": qw.dequantize() / scales,
                                                          "rtn": rtn.dequantize()}, held_hessian)
            if kept == "rtn":
                fold_scales(group, 1 / scales)
                qw = rtn
        _swap_stacked(layer, names, qw)
    for name in others:
        stacked, qw, _ = _gptq_stacked(layer, [name], stats[name][1], config, held_hessians.get(name))
        losses[name] = alg.hessian_error(stacked, qw.dequantize(), stats[name][1])
        if name in held_hessians:
            rtn = alg.rtn_quantize(stacked, config.bits, config.group_size, config.sym, config.clip)
            kept, choices[sg.group_name([name])] = sg.pick(stacked, {"gptq": qw.dequantize(),
                                                                     "rtn": rtn.dequantize()}, held_hessians[name])
            qw = rtn if kept == "rtn" else qw
        _swap_stacked(layer, [name], qw)
    _quantize_layer_rtn(layer, config)  # what is left: Linears of skipped groups, o_proj with rtn rounding
    return losses, choices


def _round_stacked(layer: Any, names: list[str], hessian: torch.Tensor | None, config: WeightQuantConfig,
                   held: torch.Tensor | None = None) -> alg.QuantizedWeight:
    """The named Linears' stacked weights rounded by GPTQ with `hessian` (refit checked on `held`), or
    to nearest without one."""
    if hessian is not None:
        return _gptq_stacked(layer, names, hessian, config, held)[1]
    stacked = torch.cat([layer.get_submodule(name).weight.data for name in names]).float()
    return alg.rtn_quantize(stacked, config.bits, config.group_size, config.sym, config.clip)


def _w8a8_layer(layer: Any, inputs: LayerInputs, config: W8A8Config,
                held: LayerInputs | None = None) -> tuple[dict[str, float], dict[str, Any]]:
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
    return {}, {}


LAYER_METHODS = {"gptq": _gptq_layer, "rotate+gptq": _gptq_layer, "awq": _awq_layer, "w8a8": _w8a8_layer}


def quantize(model: Any, config: WeightQuantConfig, windows: torch.Tensor | None = None,
             tokenizer: Any = None) -> dict[str, Any]:
    """Quantize `model` in place (see the module docstring); returns a report of what was done.

    Calibrated methods read text as `config.calibration` says (default: the `mix`, 128 x 512 tokens,
    plus 16 held-out windows for the safeguard; needs `tokenizer`), unless `windows`, a
    (n_samples, seq_len) tensor of token ids, is given. RTN needs neither. `rotate+gptq` rotates the
    model first (rotate_model.py). Report: method, per-layer calibration errors (`layers`), per-layer
    safeguard choices (`safeguard`: {layer: {group: {kept, <method>: error, rtn: error}}}) and their
    counts (`safeguard_kept`), calibration parts and tokens, lm_head, rotation, seconds.
    """
    started = time.time()
    model.eval()
    method = getattr(config, "method", "rtn")
    report: dict[str, Any] = {"method": method, "layers": {}, "safeguard": {}}
    final: LayerInputs | None = None
    held_final: LayerInputs | None = None
    with torch.no_grad():
        if isinstance(config, RotateGPTQConfig):
            report["rotation"] = rotate_llama(model, config.rotation.seed, config.rotation.construction)
        if method == "rtn":
            for layer in decoder_layers(model):
                _quantize_layer_rtn(layer, config)
        else:
            step = LAYER_METHODS[method]
            fit, held = sg.calibration_windows(config, windows, tokenizer, report)

            def process(index: int, layer: Any, inputs: LayerInputs, held_inputs: LayerInputs | None) -> None:
                report["layers"][index], choices = step(layer, inputs, config, held_inputs)
                if choices:
                    report["safeguard"][index] = choices

            final, held_final = sg.sequential_with_holdout(model, fit, held, process,
                                                           config.calibration.batch_size, f"{method} per layer")
        report["lm_head"] = _quantize_lm_head(model, config, final, held_final)
    report["safeguard_kept"] = sg.kept_counts(report["safeguard"])
    report["seconds"] = round(time.time() - started, 2)
    return report


def _quantize_lm_head(model: Any, config: WeightQuantConfig, final: LayerInputs | None,
                      held: LayerInputs | None = None) -> str:
    """Quantize the lm_head (see the module docstring); returns what was done."""
    head = model.get_output_embeddings()
    if config.lm_head_bits is None or not isinstance(head, torch.nn.Linear):
        return "kept"
    embed = model.get_input_embeddings()
    tied = embed.weight is head.weight
    bits = config.lm_head_bits
    group = 0 if bits == 8 else config.group_size
    sym, clip = (config.sym, config.clip) if bits < 8 else (False, 0.0)
    qw = alg.rtn_quantize(head.weight.data, bits, group, sym, clip)
    how = f"rtn int{bits}"
    if bits < 8 and final is not None and isinstance(config, GPTQConfig):
        norm = getattr(getattr(model, "model", model), "norm", None)
        hessian = sg.hessian_hidden(final.hidden, norm)
        held_hessian = sg.hessian_hidden(held.hidden, norm) if held is not None else None
        gptq = alg.gptq_quantize(head.weight.data, hessian, bits, group, config.sym, config.block_size,
                                 config.damp, config.act_order, config.clip)
        if config.refit_scales:
            gptq, _ = _refit_checked(head.weight.data.float(), gptq, hessian, held_hessian, config)
        kept = "gptq"
        if held is not None:
            kept, _ = sg.pick(head.weight.data, {"gptq": gptq.dequantize(), "rtn": qw.dequantize()}, held_hessian)
        qw, how = (gptq, f"gptq int{bits}") if kept == "gptq" else (qw, f"rtn int{bits} (safeguard: gptq worse)")
    quant = to_quant_linear(head, qw)
    set_module(model, next(n for n, m in model.named_modules() if m is head), quant)
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
