"""Compression: quantization (`lmopt.compress.quantize`), pruning, and the calibration flow they share.

`lmopt.compress.calibration` runs calibration data through a model one decoder layer at a time;
every method that needs activations (GPTQ, AWQ, SmoothQuant, Wanda, SparseGPT) builds on it.
"""
