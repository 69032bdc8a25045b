"""Students cut from a teacher: keep a subset of its decoder layers (every k-th, or by block influence).

The student is a deep copy of the teacher with the other layers removed, so it shares the tokenizer,
embeddings, final norm and head and starts as a good initialization (the "freshly cut" student). The
kept teacher layer indices are recorded in `config.lmopt_teacher_layers`, which `distill` uses to
match hidden states to the right teacher layers.

Block influence (ShortGPT, Men et al. 2024): BI_l = 1 - mean over tokens of cos(h_in, h_out) of layer
l; a layer that barely changes its input is the cheapest to drop.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from lmopt.errors import LmoptError
from lmopt.models import LoadedModel


def uniform_layers(n_total: int, n_keep: int) -> list[int]:
    """`n_keep` evenly spaced layer indices out of `n_total`, first and last always included."""
    if not 1 <= n_keep <= n_total:
        raise LmoptError(
            f"student_layers: must be between 1 and the teacher's {n_total} layers, got {n_keep}"
        )
    if n_keep == 1:
        return [n_total - 1]
    return sorted({round(i * (n_total - 1) / (n_keep - 1)) for i in range(n_keep)})


def decoder_layers(model: Any) -> Any:
    """The ModuleList of decoder layers (Llama/Mistral/Qwen `model.layers`, GPT-2 `transformer.h`)."""
    base = getattr(model, "model", None) or getattr(model, "transformer", None)
    layers = getattr(base, "layers", None) if base is not None else None
    if layers is None and base is not None:
        layers = getattr(base, "h", None)
    if layers is None:
        raise LmoptError(f"{type(model).__name__}: cannot find its decoder layers to cut a student from")
    return layers


def block_influence(model: Any, batches: list[Any]) -> list[float]:
    """BI per decoder layer, averaged over the (unpadded) tokens of `batches` of input ids (batch, seq)."""
    n_layers = len(decoder_layers(model))
    sums, count = torch.zeros(n_layers, dtype=torch.float64), 0
    with torch.no_grad():
        for ids in batches:
            hidden = model(input_ids=ids.to(model.device), output_hidden_states=True).hidden_states
            # hidden: n_layers + 1 tensors (batch, seq, d); the last is after the final norm, so layer
            # n-1's raw output is unavailable: compare the normed output there (the same direction test).
            for layer in range(n_layers):
                cos = torch.nn.functional.cosine_similarity(
                    hidden[layer].float(), hidden[layer + 1].float(), dim=-1
                )
                sums[layer] += (1 - cos).double().sum().cpu()
            count += ids.numel()
    return (sums / max(count, 1)).tolist()


def influence_layers(model: Any, n_keep: int, batches: list[Any]) -> list[int]:
    """The `n_keep` layers with the highest block influence, in model order."""
    scores = block_influence(model, batches)
    uniform_layers(len(scores), n_keep)  # validates n_keep
    return sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:n_keep])


def keep_layers(model: Any, layers: list[int]) -> Any:
    """A deep copy of `model` with only decoder `layers` (teacher indices, ascending)."""
    student = copy.deepcopy(model)
    old = decoder_layers(student)
    kept = torch.nn.ModuleList([old[i] for i in layers])
    for new_idx, layer in enumerate(kept):  # the KV cache is indexed by layer_idx
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    base = getattr(student, "model", None) or student.transformer
    if hasattr(base, "layers"):
        base.layers = kept
    else:
        base.h = kept
    config = student.config
    for name in ("num_hidden_layers", "n_layer"):
        if hasattr(config, name):
            setattr(config, name, len(layers))
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in layers]
    config.lmopt_teacher_layers = list(layers)
    return student


def student_from_teacher(
    teacher: Any, n_layers: int, selection: str = "uniform", batches: list[Any] | None = None
) -> Any:
    """A `LoadedModel` student with `n_layers` of the teacher's layers (see the module docstring)."""
    n_total = len(decoder_layers(teacher.model))
    if selection == "uniform":
        layers = uniform_layers(n_total, n_layers)
    elif selection == "block_influence":
        if not batches:
            raise LmoptError("layer_selection block_influence needs sample batches of the training data")
        layers = influence_layers(teacher.model, n_layers, batches)
    else:
        raise LmoptError(f"layer_selection: unknown '{selection}' (choose uniform, block_influence)")
    student = keep_layers(teacher.model, layers)
    card = teacher.card.model_copy(
        update={
            "name": f"{teacher.card.name or teacher.ref}-{n_layers}L",
            "parent": teacher.ref,
            "step": "cut-layers",
            "config": {"layers": layers, "selection": selection},
        }
    )
    return LoadedModel(student, teacher.tokenizer, f"{teacher.ref}[{n_layers} layers]", None, card)
