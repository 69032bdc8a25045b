"""Integration: the embedded SmolLM2-135M quantized by lmopt (RTN, 4-bit asymmetric, groups of 32) and
exported to q4_1 code for code, read back by transformers' GGUF loader."""

from __future__ import annotations

import copy

import pytest

from lmopt.compress.quantize.apply import prepare_runtime, quantize
from lmopt.compress.quantize.config import RTNConfig
from lmopt.export import ExportConfig, export
from lmopt.models import LoadedModel

pytestmark = pytest.mark.integration


def test_embedded_q4_1_code_for_code(embedded, tmp_path):
    model = copy.deepcopy(embedded.model)
    quantize(model, RTNConfig(bits=4, group_size=32, sym=False))
    prepare_runtime(model, "dequant")
    loaded = LoadedModel(model, embedded.tokenizer, embedded.ref, embedded.path, embedded.card)
    result = export(loaded, ExportConfig(type="q4_1", output=str(tmp_path / "smollm2.gguf"),
                                         parity={"max_tokens": 256}))
    assert result.details["tensor_types"]["q4_1:exact"] == 210  # 30 layers x 7 projections
    assert result.details["pre_tokenizer"] == "smollm"  # inherited from the GGUF the model came from
    assert result.parity["passed"], result.parity
    assert result.parity["tokenizer_agreement"] == 1.0 and result.parity["chat_template_kept"]
