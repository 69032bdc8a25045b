"""The numbers of a model that decide its memory and speed: parameters by kind, layers, KV-cache geometry.

`model_shape(ref)` builds the model on PyTorch's `meta` device from its config (no weights are read), so
a plan for a large model costs nothing. Parameters are split as a roofline needs them:
- matrices read per generated token (every >=2-D weight except an untied input embedding, which is a
  row lookup; a tied embedding counts once, as the lm_head that reads it whole);
- the untied input embedding (stored, not read per token);
- vectors (norms, biases).
Sliding-window layers (Gemma 3, Mistral) keep at most `window` tokens of KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.models import LoadedModel
from lmopt.models.load import resolve


@dataclass(frozen=True)
class ModelShape:
    name: str
    matrices: tuple[tuple[int, int], ...]
    """(rows, cols) of every weight matrix read per decoded token (the lm_head included)."""
    embedding: tuple[int, int] | None
    """(vocab, hidden) of an untied input embedding; None when tied to the lm_head."""
    vector_params: int
    """Parameters in 1-D tensors (norms, biases)."""
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    windows: tuple[int | None, ...] = field(default=())
    """Per layer: the sliding-window length, or None for full attention (empty: all full)."""

    @property
    def matrix_params(self) -> int:
        return sum(r * c for r, c in self.matrices)

    @property
    def params(self) -> int:
        emb = self.embedding[0] * self.embedding[1] if self.embedding else 0
        return self.matrix_params + emb + self.vector_params

    def layer_windows(self) -> tuple[int | None, ...]:
        return self.windows or (None,) * self.layers

    def kv_tokens(self, context: int) -> int:
        """Token slots of KV cache over all layers at `context` tokens (windows cap their layers)."""
        return sum(context if w is None else min(context, w) for w in self.layer_windows())

    def kv_bytes(self, context: int, batch: int, bytes_per_value: float) -> float:
        """K and V of every layer: 2 x kv_heads x head_dim values per token slot, per sequence."""
        return 2 * self.kv_heads * self.head_dim * self.kv_tokens(context) * batch * bytes_per_value

    def attention_keys_prefill(self, context: int) -> int:
        """Sum over layers and query positions 1..context of the keys each causal query sees."""
        total = 0
        for w in self.layer_windows():
            if w is None or context <= w:
                total += context * (context + 1) // 2
            else:
                total += w * (w + 1) // 2 + (context - w) * w
        return total

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "matrix_params": self.matrix_params,
                "layers": self.layers, "hidden": self.hidden, "vocab": self.vocab,
                "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                "sliding_layers": sum(w is not None for w in self.layer_windows())}


def _windows(config: Any, layers: int) -> tuple[int | None, ...]:
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not types or not window:
        return ()
    return tuple(window if t == "sliding_attention" else None for t in types[:layers])


def shape_of_model(model: Any, name: str = "model") -> ModelShape:
    """The shape of a built model (real or on the meta device)."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and getattr(head, "weight", None) is embed
    matrices, vectors, seen = [], 0, set()
    for tensor in model.parameters():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if tensor.dim() >= 2:
            if tensor is not embed or tied:
                matrices.append((int(tensor.shape[0]), tensor.numel() // int(tensor.shape[0])))
        else:
            vectors += tensor.numel()
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(
        name=name, matrices=tuple(matrices), embedding=None if tied else (int(embed.shape[0]), int(embed.shape[1])),
        vector_params=vectors, layers=layers, hidden=config.hidden_size,
        intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size), vocab=config.vocab_size,
        attention_heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
        windows=_windows(config, layers),
    )


def shape_of_config(config: Any, name: str = "model") -> ModelShape:
    """Build the causal LM of `config` on the meta device (no memory) and read its shape."""
    # lazy: torch and transformers' model classes take seconds to import (the CLI imports this package)
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config)
        except ValueError as exc:
            raise LmoptError(f"{name}: not a causal language model ({str(exc).splitlines()[0]})") from None
    return shape_of_model(model, name)


def model_config(model: str | Path | LoadedModel | ModelShape | Any) -> Any | None:
    """The transformers config of a model reference or a built model (None for a bare ModelShape)."""
    if isinstance(model, ModelShape):
        return None
    if isinstance(model, LoadedModel):
        return model.model.config
    if hasattr(model, "config"):
        return model.config
    from transformers import AutoConfig  # lazy: see shape_of_config

    return AutoConfig.from_pretrained(str(resolve(model)))


def model_shape(model: str | Path | LoadedModel | ModelShape | Any) -> ModelShape:
    """The shape of a model reference (alias, .gguf, directory), a `LoadedModel` or a built model."""
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, LoadedModel):
        return shape_of_model(model.model, model.ref)
    if hasattr(model, "parameters") and hasattr(model, "config"):
        return shape_of_model(model, type(model).__name__)
    from transformers import AutoConfig  # lazy: see shape_of_config

    where = resolve(model)
    try:
        config = AutoConfig.from_pretrained(str(where))
    except (OSError, ValueError) as exc:
        raise LmoptError(f"{model}: cannot read the model config ({str(exc).splitlines()[0]})") from None
    return shape_of_config(config, str(model))
