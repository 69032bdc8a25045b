"""Orchestration of unstructured and N:M pruning: which Linears, which statistics, in which order.

Lifecycle of `prune_unstructured(model, config, windows)`:
1. magnitude: every Linear inside the decoder layers is masked by |W|; no data needed.
2. Wanda / SparseGPT: `lmopt.compress.calibration.sequential_calibrate` walks the decoder layers in
   order. For each layer, Linear-input hooks accumulate ||X_j||^2 (Wanda) or H = X^T X (SparseGPT)
   over the calibration windows; Linears that read the same tensor (q/k/v, gate/up) share one set of
   statistics. Then every Linear of the layer is pruned from those dense-layer statistics (as both
   papers do), and the calibration flow reruns the pruned layer so the next layer is calibrated on
   what the pruned model really produces.
The zeros are stored in the ordinary dense weights, so the model saves and loads as a plain HF model
(and runs no faster on dense kernels).
"""

from __future__ import annotations

from typing import Any

import torch

from lmopt.compress.calibration import collect_linear_inputs, decoder_layers, linear_modules, sequential_calibrate
from lmopt.compress.prune.config import MagnitudeConfig, SparseGPTConfig, WandaConfig
from lmopt.compress.prune.math import (
    add_input_stats,
    apply_mask,
    magnitude_scores,
    nm_mask,
    parse_pattern,
    sparsegpt_prune_weight,
    sparsity_mask,
    wanda_scores,
)
from lmopt.errors import LmoptError


def _targets(layer: Any, skip: list[str]) -> dict[str, Any]:
    return linear_modules(layer, skip=skip)


def _mask_from_scores(scores: Any, config: Any, per_row: bool) -> Any:
    nm = parse_pattern(config.pattern)
    if nm:
        return nm_mask(scores, *nm)
    return sparsity_mask(scores, config.sparsity, per_row=per_row)


def _check_shapes(layers: Any, config: Any) -> None:
    nm = parse_pattern(config.pattern)
    if not nm:
        return
    for i, layer in enumerate(layers):
        for name, linear in _targets(layer, config.skip).items():
            if linear.in_features % nm[1]:
                raise LmoptError(f"pattern {config.pattern}: layers.{i}.{name} has {linear.in_features} "
                                 f"inputs, not a multiple of {nm[1]} (add it to `skip`)")


class _InputStats:
    """Running ||X_j||^2 (and X^T X) per Linear input; q/k/v (and gate/up) share one entry."""

    def __init__(self, hessian: bool) -> None:
        self.hessian = hessian
        self.stats: dict[str, list[Any]] = {}  # name -> [H or None, sq_norm, count]
        self.alias: dict[str, str] = {}  # name -> the name whose statistics it shares
        self._last: tuple[Any, str] | None = None

    def __call__(self, name: str, linear: Any, x: Any) -> None:
        if self._last is not None and self._last[0] is x:  # same tensor as the previous Linear
            self.alias[name] = self._last[1]
            return
        self._last = (x, name)
        d, dev = x.shape[-1], x.device  # statistics live where the activations are (CPU or GPU)
        entry = self.stats.setdefault(name, [torch.zeros(d, d, device=dev) if self.hessian else None,
                                             torch.zeros(d, device=dev), 0])
        entry[2] = add_input_stats(entry[0], entry[1], entry[2], x.detach())

    def get(self, name: str) -> list[Any]:
        return self.stats[self.alias.get(name, name)]


def _prune_layer(layer: Any, inputs: Any, config: WandaConfig | SparseGPTConfig, report: dict) -> None:
    targets = _targets(layer, config.skip)
    stats = _InputStats(hessian=config.method == "sparsegpt")
    collect_linear_inputs(layer, inputs, stats, names=list(targets))
    for name, linear in targets.items():
        hessian, sq_norm, _ = stats.get(name)
        if config.method == "wanda":
            mask = _mask_from_scores(wanda_scores(linear.weight, sq_norm), config, per_row=True)
            apply_mask(linear.weight, mask)
        else:
            new, mask = sparsegpt_prune_weight(linear.weight, hessian, config.sparsity,
                                               parse_pattern(config.pattern), config.blocksize, config.damp)
            linear.weight.data.copy_(new)
        report["pruned"] += int(mask.sum())
        report["total"] += mask.numel()


def prune_unstructured(model: Any, config: MagnitudeConfig | WandaConfig | SparseGPTConfig,
                       windows: Any = None) -> dict[str, Any]:
    """Prune every Linear in the decoder layers in place; `windows` (n, seq) feeds Wanda/SparseGPT."""
    layers = decoder_layers(model)
    _check_shapes(layers, config)
    report = {"pruned": 0, "total": 0}
    if config.method == "magnitude":
        with torch.no_grad():
            for layer in layers:
                for linear in _targets(layer, config.skip).values():
                    mask = _mask_from_scores(magnitude_scores(linear.weight), config, per_row=False)
                    apply_mask(linear.weight, mask)
                    report["pruned"] += int(mask.sum())
                    report["total"] += mask.numel()
    else:
        def process(_index: int, layer: Any, inputs: Any) -> None:
            _prune_layer(layer, inputs, config, report)

        sequential_calibrate(model, windows, process,
                             batch_size=config.calibration.batch_size, description=f"{config.method} pruning")
    return {"method": config.method, "pattern": config.pattern, "target_sparsity": config.target_sparsity(),
            "sparsity": round(report["pruned"] / max(1, report["total"]), 4),
            "pruned_weights": report["pruned"], "pruned_linears_weights": report["total"]}
