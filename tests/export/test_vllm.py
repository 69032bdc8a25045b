"""vLLM export: compressed-tensors pack-quantized layout, checked against compressed-tensors itself."""

from __future__ import annotations

import json

import pytest
import torch

from lmopt.compress.quantize.apply import prepare_runtime, quant_layers, quantize
from lmopt.compress.quantize.config import RTNConfig
from lmopt.errors import LmoptError
from lmopt.export import ExportConfig, export
from lmopt.export.vllm_export import _load_decompressed, _own_decompress, pack_int32, unpack_int32
from lmopt.models import tiny_llama


def rtn_model(bits: int, sym: bool, group: int, hidden: int = 192):
    loaded = tiny_llama(hidden_size=hidden, intermediate_size=2 * hidden)
    quantize(loaded.model, RTNConfig(bits=bits, group_size=group, sym=sym))
    prepare_runtime(loaded.model, "dequant")
    return loaded


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_matches_compressed_tensors(bits):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    codes = torch.randint(0, 2 ** bits, (16, 64))
    signed = (codes - 2 ** (bits - 1)).to(torch.int8)
    assert torch.equal(pack_int32(codes, bits), helpers.pack_to_int32(signed, bits))
    assert torch.equal(pack_int32(codes.t().contiguous(), bits).t(), helpers.pack_to_int32(signed, bits, packed_dim=0))
    assert torch.equal(unpack_int32(pack_int32(codes, bits), bits, 64), codes)


@pytest.mark.parametrize(("sym", "group"), [(False, 32), (True, 128)])
def test_w4a16_round_trip_code_for_code(tmp_path, sym, group):
    loaded = rtn_model(4, sym, group)
    result = export(loaded, ExportConfig(format="vllm", output=str(tmp_path / "v")))
    config = json.loads((result.path / "config.json").read_text())
    quant = config["quantization_config"]
    weights = quant["config_groups"]["group_0"]["weights"]
    # 192 = 128 + 64: groups of 128 become groups of gcd(128, 192) = 64 with repeated scales
    assert (weights["group_size"], weights["symmetric"]) == ({32: 32, 128: 64}[group], sym)
    assert quant["ignore"] == ["lm_head"] and config["torch_dtype"] == "float16"
    assert result.parity["passed"] and result.parity["top1_agreement"] == 1.0
    ct = pytest.importorskip("compressed_tensors.quantization")
    ct.QuantizationConfig.model_validate(quant)  # the format's own schema accepts the config
    own = _load_decompressed(result.path, config, weights, _own_decompress)
    for name, layer in quant_layers(loaded.model).items():
        if name != "lm_head":
            assert torch.equal(own.get_submodule(name).weight, layer.dequantize()), name


def test_float_model_is_plain_safetensors(tiny, tmp_path):
    result = export(tiny, ExportConfig(format="vllm", type="f16", output=str(tmp_path / "v")))
    config = json.loads((result.path / "config.json").read_text())
    assert "quantization_config" not in config and config["torch_dtype"] == "float16"
    assert result.parity["passed"] and result.parity["reader"] == "transformers"


def test_w8a16_needs_symmetric(tmp_path):
    result = export(rtn_model(8, True, 0), ExportConfig(format="vllm", output=str(tmp_path / "v")))
    assert result.details["scheme"] == {"bits": 8, "symmetric": True, "group_size": None, "strategy": "channel"}
    assert result.parity["passed"]
    with pytest.raises(LmoptError, match="symmetric"):
        export(rtn_model(8, False, 0), ExportConfig(format="vllm", output=str(tmp_path / "w")))
    assert not (tmp_path / "w").exists()
