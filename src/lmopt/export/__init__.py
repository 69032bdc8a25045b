"""Export: write a model in the formats runtimes load (GGUF for llama.cpp/Ollama, ONNX for ONNX Runtime,
compressed-tensors safetensors for vLLM), each read back and checked for parity with the source.

Importing the package (or its config, as the CLI does) loads no torch: `export` comes in on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmopt.export.config import ExportConfig, ParityConfig

__all__ = ["ExportConfig", "ExportResult", "ParityConfig", "export"]


def __getattr__(name: str) -> Any:  # lazy: `lmopt --help` imports the config, not torch
    if name in ("export", "ExportResult"):
        return getattr(importlib.import_module("lmopt.export.api"), name)
    raise AttributeError(name)
