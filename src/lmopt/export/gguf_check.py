"""Read a written GGUF back with readers that share no code with the writer's tensor plan.

gguf's `GGUFReader` gives the metadata (architecture, types, tokenizer, chat template) and
transformers' GGUF loader (`from_pretrained(dir, gguf_file=...)`) de-quantizes every tensor, undoes
llama.cpp's q/k permutation and rebuilds the tokenizer from the metadata. That model and tokenizer
are what the parity check compares with the source.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lmopt.export.config import ParityConfig
from lmopt.export.parity import compare, judge, parity_windows, tokenizer_agreement, torch_logits


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The keys a llama.cpp user looks at, read with gguf's reader."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = reader.fields

    def value(key: str) -> Any:
        field = fields.get(key)
        if field is None:
            return None
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            return len(field.data)
        return field.contents()

    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {"architecture": value("general.architecture"), "file_type": value("general.file_type"),
            "tensors": len(reader.tensors), "tensor_types": dict(sorted(types.items())),
            "tokenizer_model": value("tokenizer.ggml.model"), "pre_tokenizer": value("tokenizer.ggml.pre"),
            "tokens": value("tokenizer.ggml.tokens"), "merges": value("tokenizer.ggml.merges"),
            "chat_template": value("tokenizer.chat_template") is not None}


def load_gguf(path: Path) -> tuple[Any, Any]:
    """transformers' de-quantizing GGUF loader: (model in float32, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, name = str(path.parent), path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def gguf_parity(path: Path, source: Any, tokenizer: Any, text: str, config: ParityConfig,
                kind: str) -> dict[str, Any]:
    """Figures of the read-back GGUF against the source model (see lmopt.export.parity)."""
    model, reader_tokenizer = load_gguf(path)
    windows = parity_windows(tokenizer, text, config)
    figures = compare(torch_logits(source), torch_logits(model), windows)
    figures["tokenizer_agreement"] = tokenizer_agreement(tokenizer, reader_tokenizer, text)
    figures["chat_template_kept"] = getattr(reader_tokenizer, "chat_template", None) == getattr(
        tokenizer, "chat_template", None)
    figures["reader"] = "transformers GGUF loader (de-quantized) + gguf.GGUFReader"
    return judge(figures, kind)
