"""The safeguard: keep a calibrated rounding (GPTQ, AWQ) of a Linear group only where it beats
round-to-nearest on held-out calibration tokens.

Why: GPTQ and AWQ fit each layer to the calibration activations. On a small or narrow calibration set
the fit can be worse than plain rounding on other text (issue 13: GPTQ W4 x1.43 WikiText-2 perplexity
against RTN's x1.39 when calibrated on Python docs). A check on tokens the fit never saw catches that.

How: `holdout_count` extra windows (1 in 8) are drawn beside the calibration windows and split off
(`split_windows`); they never enter a Hessian or a scale search. `sequential_with_holdout` runs them
through the model beside the calibration windows, layer by layer, through the already-quantized
layers. For each group of Linears that read one input (q/k/v, o, gate/up, down) the held-out output
error of each candidate, mean over rows of d H d^T with d = w - w_hat and H the held-out inputs' mean
x x^T (`pick`), decides which rounding is kept; the choice and both errors go into the report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lmopt.compress.calibration import (
    LayerInputs,
    capture_layer_inputs,
    collect_linear_inputs,
    decoder_layers,
    run_layer,
    sequential_calibrate,
)
from lmopt.compress.calibration_data import calibration_set
from lmopt.compress.quantize import algorithms as alg
from lmopt.errors import LmoptError
from lmopt.progress import progress_bar

HOLDOUT_EVERY = 8
"""One held-out window per 8 calibration windows."""
GROUP_NAMES = {("q_proj", "k_proj", "v_proj"): "qkv", ("o_proj",): "o", ("gate_proj", "up_proj"): "gate_up",
               ("down_proj",): "down"}


def group_name(names: list[str]) -> str:
    """Short report name of a group of Linears: qkv, o, gate_up, down (else their names joined by +)."""
    short = tuple(n.rsplit(".", 1)[-1] for n in names)
    return GROUP_NAMES.get(short, "+".join(short))


def holdout_count(n_samples: int) -> int:
    """Held-out windows drawn beside `n_samples` calibration windows."""
    return max(1, n_samples // HOLDOUT_EVERY)


def split_windows(windows: torch.Tensor, n_held: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held): `n_held` evenly spaced windows held out, so every part of a mix has its share."""
    n = windows.shape[0]
    held = torch.tensor(sorted({min(n - 1, int((i + 0.5) * n / n_held)) for i in range(n_held)}))
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    return windows[keep], windows[held]


def calibration_windows(config: Any, windows: torch.Tensor | None, tokenizer: Any,
                        report: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(calibration windows, held-out windows or None) for a calibrated method's `config`. With its
    safeguard on, 1 in 8 extra windows are drawn and held out; given `windows` give up 1 in 8 of theirs
    instead. Records in `report` the calibration parts, token counts and `calibration`: {source,
    samples, seq_len, heldout_samples, parts: {part: windows drawn, held-out ones included}}."""
    guard = bool(getattr(config, "safeguard", False))
    if windows is None:
        calibration = config.calibration
        if tokenizer is None:
            raise LmoptError("quantize: calibrated methods need `tokenizer=` (or `windows=` token ids)")
        n_held = holdout_count(calibration.n_samples) if guard else 0
        drawn = calibration_set(tokenizer, calibration.source, calibration.n_samples + n_held,
                                calibration.seq_len, calibration.seed, calibration.data_dir)
        windows, report["calibration_parts"], source = drawn.windows, drawn.parts, calibration.source
    else:
        n_held = holdout_count(windows.shape[0]) if guard and windows.shape[0] >= 2 else 0
        if guard and not n_held:
            report["safeguard_note"] = "off: a single calibration window leaves none to hold out"
        source = "given token windows"
    fit, held = split_windows(windows, n_held) if n_held else (windows, None)
    report["calibration_tokens"] = int(fit.numel())
    report["heldout_tokens"] = int(held.numel()) if held is not None else 0
    report["calibration"] = {"source": source, "samples": int(fit.shape[0]), "seq_len": int(fit.shape[1]),
                             "heldout_samples": int(held.shape[0]) if held is not None else 0,
                             "parts": report.get("calibration_parts", {source: int(windows.shape[0])})}
    return fit, held


def sequential_with_holdout(model: Any, windows: torch.Tensor, held: torch.Tensor | None,
                            process: Callable[[int, Any, LayerInputs, LayerInputs | None], Any],
                            batch_size: int, description: str) -> tuple[LayerInputs, LayerInputs | None]:
    """`sequential_calibrate` that also carries the held-out windows' hidden states from layer to layer
    (each layer run on them after `process` changed it). Returns the last layer's outputs of both."""
    if held is None:
        final = sequential_calibrate(model, windows, lambda i, layer, inputs: process(i, layer, inputs, None),
                                     batch_size, description)
        return final, None
    layers = decoder_layers(model)
    was_training = model.training
    model.eval()
    inputs = capture_layer_inputs(model, windows, batch_size)
    held_inputs = capture_layer_inputs(model, held, batch_size)
    with progress_bar(description, len(layers)) as advance:
        for index, layer in enumerate(layers):
            process(index, layer, inputs, held_inputs)
            inputs = inputs.with_hidden(run_layer(layer, inputs))
            held_inputs = held_inputs.with_hidden(run_layer(layer, held_inputs))
            advance(1)
    model.train(was_training)
    return inputs, held_inputs


def input_hessians(layer: Any, inputs: LayerInputs, names: list[str]) -> dict[str, torch.Tensor]:
    """Mean x x^T (times 2, as `accumulate_hessian`) of each named Linear's inputs: {name: (K, K)}."""
    stats: dict[str, tuple] = {}

    def on_input(name: str, _module: Any, x: torch.Tensor) -> None:
        h, n = stats.get(name, (None, 0))
        stats[name] = alg.accumulate_hessian(h, n, x)

    collect_linear_inputs(layer, inputs, on_input, names=names)
    return {name: h for name, (h, _n) in stats.items()}


def hessian_hidden(hidden: list[torch.Tensor], norm: Any = None) -> torch.Tensor:
    """The Hessian of the lm_head's inputs: the final norm of each batch of last hidden states."""
    h, n = None, 0
    for batch in hidden:
        h, n = alg.accumulate_hessian(h, n, norm(batch) if norm is not None else batch)
    return h


def pick(weight: torch.Tensor, candidates: dict[str, torch.Tensor],
         hessian: torch.Tensor) -> tuple[str, dict[str, Any]]:
    """The candidate (name -> de-quantized (N, K) weight) with the least held-out error; on a tie the
    first. Returns (name, {"kept": name, <name>: error, ...})."""
    errors = {name: alg.hessian_error(weight, approx, hessian) for name, approx in candidates.items()}
    kept = min(errors, key=lambda name: (errors[name], list(errors).index(name)))
    return kept, {"kept": kept, **{name: float(f"{e:.4g}") for name, e in errors.items()}}


def kept_counts(choices: dict[Any, dict[str, dict[str, Any]]]) -> dict[str, int]:
    """How many groups kept each rounding, over every layer: {"gptq": 110, "rtn": 10}."""
    counts: dict[str, int] = {}
    for groups in choices.values():
        for choice in groups.values():
            counts[choice["kept"]] = counts.get(choice["kept"], 0) + 1
    return counts
