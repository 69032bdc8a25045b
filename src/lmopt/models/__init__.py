"""Models: load any reference (alias, GGUF, HF dir, hub id), save artifacts with lineage, tiny test models."""

from lmopt.models.card import ModelCard, content_hash
from lmopt.models.gguf import EMBEDDED_ALIAS, embedded_gguf_path
from lmopt.models.load import LoadedModel, load_model, register_format, resolve_dtype
from lmopt.models.save import save_model
from lmopt.models.size import count_parameters
from lmopt.models.tiny import save_tiny_llama, tiny_llama, tiny_tokenizer

__all__ = [
    "EMBEDDED_ALIAS", "LoadedModel", "ModelCard", "content_hash", "count_parameters",
    "embedded_gguf_path", "load_model", "register_format", "resolve_dtype", "save_model",
    "save_tiny_llama", "tiny_llama", "tiny_tokenizer",
]
