"""Export: write a model in the formats runtimes load (GGUF for llama.cpp/Ollama, ONNX for ONNX Runtime,
compressed-tensors safetensors for vLLM), each read back and checked for parity with the source."""

from lmopt.export.api import ExportResult, export
from lmopt.export.config import ExportConfig, ParityConfig

__all__ = ["ExportConfig", "ExportResult", "ParityConfig", "export"]
