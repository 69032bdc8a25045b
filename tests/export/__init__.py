"""Tests of lmopt.export: GGUF, ONNX and vLLM exports, each read back by an independent reader."""
