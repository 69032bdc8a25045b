"""`load_model(ref)`: one entry point for every kind of model reference.

A reference is, in order of precedence:
0. a prefixed reference handled by a registered resolver (`@production` once the model registry
   has called `register_reference_resolver("@", ...)`; see lmopt.monitor.models),
1. the alias of the embedded default (`smollm2-135m-instruct`),
2. a `.gguf` file (converted once to a cached safetensors dir),
3. a local directory (a plain HF model, or an lmopt artifact whose card names a custom format),
4. a Hugging Face Hub id (downloaded by transformers; fails with a clear message offline).

torch and transformers are imported inside the functions that use them: `lmopt.models` is imported
at CLI start-up (`lmopt --help` must not wait for them), and they take one to several seconds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.hardware import default_dtype
from lmopt.models.card import ModelCard, content_hash
from lmopt.models.gguf import EMBEDDED_ALIAS, converted_dir, embedded_gguf_path

# Custom weight formats: card.format -> "module:function". The function takes
# (directory, card, dtype) and returns the loaded nn.Module. Registered next to their code's
# package, listed here so loading never needs to import every method up front.
FORMAT_LOADERS: dict[str, str] = {
    "lmopt-quantized": "lmopt.compress.quantize.storage:load_quantized",
}

# Reference prefix -> function turning such a reference into one this module understands (a path).
# Filled at start-up by packages above this one (the model registry registers "@"), so loading a
# model never imports them.
REFERENCE_RESOLVERS: dict[str, Callable[[str], str]] = {}


@dataclass
class LoadedModel:
    """A model with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    ref: str
    path: Path | None = None
    card: ModelCard = field(default_factory=ModelCard)

    @property
    def hash(self) -> str | None:
        return content_hash(self.path) if self.path is not None else None

    def __iter__(self):  # allows `model, tokenizer = load_model(...)`
        return iter((self.model, self.tokenizer))


def register_format(name: str, loader: str) -> None:
    """Register a custom weight format loader as "package.module:function"."""
    FORMAT_LOADERS[name] = loader


def register_reference_resolver(prefix: str, resolver: Callable[[str], str]) -> None:
    """Let references starting with `prefix` (e.g. "@") be turned into paths by `resolver`."""
    REFERENCE_RESOLVERS[prefix] = resolver


def resolve(ref: str | Path) -> Path | str:
    """Turn a reference into a local directory, or return the hub id unchanged."""
    text = str(ref)
    for prefix, resolver in REFERENCE_RESOLVERS.items():
        if text.startswith(prefix):
            text = resolver(text)
            break
    else:
        if text.startswith("@"):
            raise LmoptError(f"'{text}': model aliases need the model registry (the lmopt CLI enables "
                             "it; in Python call lmopt.monitor.enable_alias_references())")
    if text.lower() == EMBEDDED_ALIAS:
        return converted_dir(embedded_gguf_path(), name=EMBEDDED_ALIAS)
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        return converted_dir(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise LmoptError(f"{path}: not a model directory (no config.json)")
        return path
    if path.exists():
        raise LmoptError(f"{path}: not a model (expected an HF directory or a .gguf file)")
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise LmoptError(f"{text}: no such model directory or file")
    return text  # a hub id


def resolve_dtype(dtype: str | Any | None) -> Any:
    """'auto' (or None) -> the hardware's best dtype; 'float32'/'bfloat16'/'float16' -> torch dtype."""
    import torch  # lazy: start-up cost (module docstring)

    if dtype is None or dtype == "auto":
        return default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise LmoptError(f"unknown dtype '{dtype}' (choose auto, float32, bfloat16, float16)")
    return names[dtype]


def load_model(ref: str | Path, dtype: str | Any = "auto", device: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer from any reference (see the module docstring)."""
    from transformers.utils import logging as hf_logging  # lazy: start-up cost (module docstring)

    hf_logging.disable_progress_bar()  # our own progress bars, and one-line errors on stderr
    torch_dtype = resolve_dtype(dtype)
    where = resolve(ref)
    if isinstance(where, str):
        return _load_from_hub(where, torch_dtype, device)
    card = ModelCard.read(where)
    if card.format != "hf":
        if card.format not in FORMAT_LOADERS:
            raise LmoptError(f"{where}: unknown model format '{card.format}' in lmopt.json")
        module, func = FORMAT_LOADERS[card.format].split(":")
        model = getattr(importlib.import_module(module), func)(where, card, torch_dtype)
    else:
        model = _from_pretrained(str(where), torch_dtype, str(where))
    tokenizer = _tokenizer(str(where), str(where))
    if device:
        model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, str(ref), Path(where), card)


def _from_pretrained(source: str, torch_dtype: Any, label: str) -> Any:
    from transformers import AutoModelForCausalLM  # lazy: start-up cost (module docstring)

    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise LmoptError(f"{label}: cannot load model: {str(exc).splitlines()[0]}") from None


def _tokenizer(source: str, label: str) -> Any:
    from transformers import AutoTokenizer  # lazy: start-up cost (module docstring)

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise LmoptError(f"{label}: cannot load tokenizer: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_from_hub(hub_id: str, torch_dtype: Any, device: str | None) -> LoadedModel:
    """Download through transformers (cached in the HF cache); a clear error when offline."""
    try:
        model = _from_pretrained(hub_id, torch_dtype, hub_id)
        tokenizer = _tokenizer(hub_id, hub_id)
    except LmoptError as exc:
        raise LmoptError(f"'{hub_id}' is not a local model and could not be fetched from the "
                         f"Hugging Face Hub (offline, or no such repo): {exc}") from None
    if device:
        model.to(device)
    model.eval()
    card = ModelCard(name=hub_id, parent=hub_id, format_info={"source": "hub"})
    return LoadedModel(model, tokenizer, hub_id, None, card)
