"""The `lmopt-quantized` on-disk format, and export of the de-quantized model as plain HF.

A directory holds `config.json` (the HF config), `model.safetensors`, the tokenizer and `lmopt.json`,
whose `format_info` lists every quantized Linear: bits, group size (and the width of the last group
when it is shorter), shape, bias, int8 activations. In the safetensors file each such Linear `name`
has `name.qweight` (codes packed `bits` per value, uint8), `name.scales` (N, G) float16 and
`name.zeros` (N, G) uint8; other tensors keep their dtype (so a reload is exact). When the embedding
was tied to a quantized lm_head it is not stored: loading rebuilds it as the lm_head's de-quantized copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmopt.compress.quantize.apply import prepare_runtime, quant_layers, set_module
from lmopt.compress.quantize.runtime import QuantLinear
from lmopt.errors import LmoptError
from lmopt.models.card import ModelCard
from lmopt.models.save import save_model

FORMAT = "lmopt-quantized"
WEIGHTS = "model.safetensors"


def _embedding_derived(model: Any) -> bool:
    head = model.get_output_embeddings()
    return isinstance(head, QuantLinear) and bool(getattr(model, "_lmopt_tied_head", False))


def format_info(model: Any) -> dict[str, Any]:
    """What `load_quantized` needs besides the tensors (saved in the card)."""
    modules = {}
    for name, layer in quant_layers(model).items():
        last = layer.in_features % layer.group_size or layer.group_size
        modules[name] = {"bits": layer.bits, "group_size": layer.group_size, "last_group": last,
                         "in_features": layer.in_features, "out_features": layer.out_features,
                         "bias": layer.bias is not None, "act_quant": layer.act_quant}
    return {"modules": modules, "embedding_from_lm_head": _embedding_derived(model)}


def save_weights(model: Any, directory: Path) -> None:
    """Write config.json and model.safetensors in the format above (a `save_model` hook)."""
    from safetensors.torch import save_file

    derived = _embedding_derived(model)
    embed = model.get_input_embeddings().weight
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        if (derived and tensor.data_ptr() == embed.data_ptr()) or key in seen:
            continue  # a derived embedding, or the second name of a tied weight (re-tied on load)
        seen.add(key)
        tensors[name] = tensor.detach().contiguous().cpu()
    model.config.save_pretrained(directory)
    save_file(tensors, str(Path(directory) / WEIGHTS), metadata={"format": "pt", "lmopt": FORMAT})


def save_quantized(model: Any, tokenizer: Any, directory: str | Path, card: ModelCard | None = None) -> Path:
    """Save a quantized model atomically (card.format = lmopt-quantized)."""
    card = card or ModelCard()
    card.format = FORMAT
    card.format_info = {**card.format_info, **format_info(model)}
    return save_model(model, tokenizer, directory, card, save_weights=save_weights)


def load_quantized(directory: str | Path, card: ModelCard, dtype: Any, backend: str = "auto") -> Any:
    """Rebuild the model from `directory` (registered in lmopt.models.load.FORMAT_LOADERS)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name, spec in card.format_info.get("modules", {}).items():
        set_module(model, name, QuantLinear(spec["in_features"], spec["out_features"], spec["bits"],
                                             spec["group_size"], spec["bias"], spec.get("act_quant", False)))
    tensors = load_file(str(directory / WEIGHTS))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    derived = card.format_info.get("embedding_from_lm_head", False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(p) for n, p in params.items() if n in tensors}
    missing = [m for m in missing if not (derived and m.endswith("embed_tokens.weight"))
               and not (m in params and id(params[m]) in loaded)]  # tied: loaded under its other name
    if missing or unexpected:
        raise LmoptError(f"{directory / WEIGHTS}: does not match lmopt.json (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    if derived:
        head = model.get_output_embeddings()
        model.get_input_embeddings().weight = torch.nn.Parameter(head.dequantize(dtype), requires_grad=False)
        model._lmopt_tied_head = True
    _cast_dense(model, dtype)
    prepare_runtime(model, backend)
    return model.eval()


def _cast_dense(model: Any, dtype: Any) -> None:
    """Float parameters to the load dtype; QuantLinear buffers keep their storage dtypes."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point() and param.dtype != dtype:
                setattr(module, name, torch.nn.Parameter(param.data.to(dtype), requires_grad=False))


def dequantized_copy(model: Any) -> Any:
    """Replace every QuantLinear by an nn.Linear holding its de-quantized weight (in place)."""
    tied = bool(getattr(model, "_lmopt_tied_head", False))
    dtype = model.get_input_embeddings().weight.dtype
    for name, layer in quant_layers(model).items():
        linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                 dtype=dtype)
        linear.weight.data.copy_(layer.dequantize(dtype))
        if layer.bias is not None:
            linear.bias.data.copy_(layer.bias.data)
        set_module(model, name, linear)
    if tied:  # re-tie: the embedding already equals the de-quantized lm_head
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
        model.config.tie_word_embeddings = True
    return model


def export_hf(model: Any, tokenizer: Any, directory: str | Path, card: ModelCard | None = None) -> Path:
    """Save the de-quantized model as a plain HF directory (any tool reads it; no size saving)."""
    import copy

    plain = dequantized_copy(copy.deepcopy(model))
    card = card or ModelCard()
    card.format, card.format_info = "hf", {**card.format_info, "dequantized_from": FORMAT}
    return save_model(plain, tokenizer, directory, card)
