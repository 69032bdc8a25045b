"""ONNX export with a KV cache, run by ONNX Runtime (greedy loop) against transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmopt.export import ExportConfig, export

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_onnx_logits_and_greedy_match(tiny, tmp_path):
    from lmopt.export.onnx_export import OrtModel

    result = export(tiny, ExportConfig(format="onnx", output=str(tmp_path / "o"),
                                       parity={"prompts": 3, "new_tokens": 8}))
    assert result.parity["passed"] and result.parity["greedy_same"] == 3
    assert result.parity["max_logit_diff"] < 1e-4
    info = json.loads((result.path / "onnx_io.json").read_text())
    assert info["opset"] == 18 and "dynamo" in info["exporter"]
    # decode with a cache equals one pass over the whole sequence
    ort_model = OrtModel(result.path)
    ids = tiny.tokenizer("for i in range(10):", return_tensors="np")["input_ids"]
    _, past = ort_model.step(ids[:, :-1], ort_model.empty_past())
    last, _ = ort_model.step(ids[:, -1:], past)
    with torch.no_grad():
        full = tiny.model(torch.from_numpy(ids)).logits[:, -1].numpy()
    assert np.abs(last[:, -1] - full).max() < 1e-4
