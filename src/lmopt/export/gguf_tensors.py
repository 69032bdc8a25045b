"""Which GGUF tensors a model becomes: llama.cpp's names, the q/k row permutation, and each tensor's type.

Names come from gguf's own `TensorNameMap` (the table llama.cpp's converter uses). llama.cpp rotates
query/key pairs that are adjacent in a head (GPT-J style) while transformers' llama rotates the two
halves of a head, so convert_hf_to_gguf.py reorders the rows of q_proj and k_proj within each head:
row (h, i, j) of the (heads, 2, head_dim/2) view moves to (h, j, i). transformers' GGUF loader
(`LlamaTensorProcessor._reverse_permute_weights`) undoes it. Blocks run along a row, so reordering
rows moves whole blocks: a quantized weight is permuted as codes, scales and zeros alike.

Types: 1-D tensors (norms, biases) are F32, as llama.cpp writes them. Matrices take the requested
type; the output projection (and the embedding tied to it) takes the head type. A layer lmopt has
quantized is written code for code when its grid fits the type (see gguf_blocks), de-quantized for
float types, and re-quantized only when asked (`requantize`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmopt.compress.quantize.runtime import QuantLinear
from lmopt.errors import LmoptError
from lmopt.export.gguf_blocks import BLOCK, QUANT_TYPES, Codes, encode_codes, encode_float, why_not_blocks

GGUF_ARCH = {"llama": "llama"}
"""transformers model_type -> llama.cpp architecture this exporter writes."""


@dataclass
class PlannedTensor:
    name: str
    data: np.ndarray
    """Float array (f32/f16) or, for block and bf16 types, the raw uint8 bytes (N, row bytes)."""
    ggml_type: str
    how: str
    """float | exact (code for code) | dequantized | requantized | misfit blocks note."""


@dataclass
class TensorReport:
    """What happened to each tensor, summed for the model card."""

    counts: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, planned: PlannedTensor) -> None:
        self.counts[f"{planned.ggml_type}:{planned.how}"] += 1


def is_tied(model: Any) -> bool:
    """The output projection shares the input embedding (or, quantized by lmopt, defines it)."""
    head = model.get_output_embeddings()
    if isinstance(head, QuantLinear):
        return bool(getattr(model, "_lmopt_tied_head", False))
    return head is not None and head.weight is model.get_input_embeddings().weight


def qk_permutation(rows: int, n_head: int) -> torch.Tensor:
    """Row order that llama.cpp's converter gives a (rows, K) q or k weight with `n_head` heads."""
    half = rows // n_head // 2
    return torch.arange(rows).view(n_head, 2, half).transpose(1, 2).reshape(-1)


def weight_codes(layer: QuantLinear) -> Codes:
    return Codes(layer.codes().cpu(), layer.scales.cpu(), layer.zeros.cpu(), layer.bits, layer.group_size)


def model_codes(model: Any) -> dict[str, Codes]:
    """Every QuantLinear of the model as codes, by module name."""
    return {name: weight_codes(m) for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def auto_type(model: Any) -> str:
    """The GGUF type matching a quantized model's layer grids (f16 for a float model)."""
    head = model.get_output_embeddings()
    body = [m for m in model.modules() if isinstance(m, QuantLinear) and m is not head]
    if not body:
        return "f16"
    if max(m.bits for m in body) > 4:
        return "q8_0"
    symmetric = all(why_not_blocks(weight_codes(m), "q4_0") is None for m in body)
    return "q4_0" if symmetric else "q4_1"


def head_type(main: str, choice: str) -> str:
    """The type asked for the output projection; `auto` may still be changed per model by `_head_kind`."""
    if choice == "auto":
        return "auto-q8_0" if main in ("q4_0", "q4_1") else f"auto-{main}"
    return main if choice == "same" else choice


def _head_kind(module: Any, head: str) -> str:
    """An `auto` head type: a quantized lm_head keeps its own grid when a block type holds it (its
    8-bit asymmetric default does not fit q8_0's int8, so it becomes f16 of its de-quantized weight,
    exact up to fp16 rounding, rather than being rounded a second time)."""
    if not head.startswith("auto-"):
        return head
    kind = head.removeprefix("auto-")
    if not isinstance(module, QuantLinear):
        return kind
    codes = weight_codes(module)
    for candidate in ("q4_0", "q4_1", "q8_0") if codes.bits <= 4 else ("q8_0",):
        if why_not_blocks(codes, candidate) is None and not _misfit_blocks(codes, candidate):
            return candidate if kind in QUANT_TYPES else kind
    return "f16" if kind in QUANT_TYPES else kind


def plan_tensors(model: Any, main: str, head: str, requantize: bool) -> tuple[list[PlannedTensor], TensorReport]:
    """Every tensor of the GGUF for a llama-family model, with its data and type."""
    import gguf

    config = model.config
    arch = gguf.MODEL_ARCH[GGUF_ARCH[config.model_type].upper()]
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    out_embed = model.get_output_embeddings()
    tied = is_tied(model)
    report, planned = TensorReport(), []
    for module_name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not params and not isinstance(module, QuantLinear):
            continue
        if module is out_embed and tied:
            continue  # llama.cpp reads a missing output.weight as tied to token_embd
        base = names.get_name(module_name)
        if base is None:
            raise LmoptError(f"{module_name}: no GGUF tensor name for this module ({config.model_type})")
        source = out_embed if (tied and module is model.get_input_embeddings()) else module
        kind = _head_kind(source, head) if source is out_embed else main
        permute = _permutation(module_name, config)
        planned.append(_plan_weight(f"{base}.weight", source, kind, permute, requantize, report))
        bias = getattr(module, "bias", None)
        if bias is not None:
            data = bias.detach().float().cpu()
            data = data[permute] if permute is not None else data
            planned.append(PlannedTensor(f"{base}.bias", data.numpy(), "f32", "float"))
    for item in planned:
        report.add(item)
    return planned, report


def _misfit_blocks(codes: Codes, kind: str) -> bool:
    """Some block's codes fall outside int8 (only q8_0 can have such blocks)."""
    if kind != "q8_0":
        return False
    k = codes.shape[1]
    zero = codes.zero.to(torch.int16).repeat_interleave(codes.group_size, 1)[:, :k]
    signed = codes.q.to(torch.int16) - zero
    return bool((signed < -128).any() or (signed > 127).any())


def _permutation(module_name: str, config: Any) -> torch.Tensor | None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if module_name.endswith("self_attn.q_proj"):
        return qk_permutation(config.num_attention_heads * head_dim, config.num_attention_heads)
    if module_name.endswith("self_attn.k_proj"):
        return qk_permutation(config.num_key_value_heads * head_dim, config.num_key_value_heads)
    return None


def _plan_weight(name: str, module: Any, kind: str, permute: torch.Tensor | None, requantize: bool,
                 report: TensorReport) -> PlannedTensor:
    if isinstance(module, QuantLinear):
        codes = weight_codes(module)
        codes = codes.rows(permute) if permute is not None else codes
        return _plan_codes(name, codes, kind, requantize, report)
    weight = module.weight.detach().float().cpu()
    weight = weight[permute] if permute is not None else weight
    if weight.dim() == 1:
        return PlannedTensor(name, weight.numpy(), "f32", "float")
    return _plan_float(name, weight, kind, "float", report)


def _plan_codes(name: str, codes: Codes, kind: str, requantize: bool, report: TensorReport) -> PlannedTensor:
    if kind not in QUANT_TYPES:
        return _plan_float(name, codes.dequantize(), kind, "dequantized", report)
    reason = why_not_blocks(codes, kind)
    if reason is None:
        blocks, misfit = encode_codes(codes, kind)
        if misfit:
            report.notes.append(f"{name}: {misfit} of {blocks.shape[0] * codes.shape[1] // BLOCK} "
                                f"blocks hold codes outside int8 and were rounded to nearest")
        return PlannedTensor(name, blocks, kind, "exact")
    if not requantize:
        raise LmoptError(f"{name}: the model's {codes.bits}-bit grid cannot be written as {kind}: {reason} "
                         f"(pass requantize to re-quantize it, losing its calibrated rounding)")
    report.notes.append(f"{name}: re-quantized to {kind} by round-to-nearest ({reason})")
    return _plan_float(name, codes.dequantize(), kind, "requantized", report)


def _plan_float(name: str, weight: torch.Tensor, kind: str, how: str, report: TensorReport) -> PlannedTensor:
    if kind == "f32":
        return PlannedTensor(name, weight.numpy().astype(np.float32), "f32", how)
    if kind == "f16":
        return PlannedTensor(name, weight.numpy().astype(np.float16), "f16", how)
    if kind == "bf16":
        return PlannedTensor(name, encode_float(weight, "bf16"), "bf16", how)
    if weight.shape[-1] % BLOCK:
        report.notes.append(f"{name}: rows of {weight.shape[-1]} do not split into {BLOCK}-blocks; kept f16")
        return PlannedTensor(name, weight.numpy().astype(np.float16), "f16", how)
    return PlannedTensor(name, encode_float(weight, kind), kind, "requantized" if how != "float" else "rtn")
