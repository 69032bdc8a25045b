"""GGUF export of tiny llamas, read back by transformers' GGUF loader and gguf's reader (the references)."""

from __future__ import annotations

import copy
import json

import gguf
import numpy as np
import pytest
import torch

from lmopt.compress.quantize.apply import prepare_runtime, quant_layers, quantize
from lmopt.compress.quantize.config import RTNConfig
from lmopt.errors import LmoptError
from lmopt.export import ExportConfig, export
from lmopt.export.gguf_check import load_gguf
from lmopt.export.gguf_tensors import qk_permutation
from lmopt.models import tiny_llama

GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def rtn_model(sym: bool, group: int, hidden: int = 64, **kwargs):
    loaded = tiny_llama(hidden_size=hidden, intermediate_size=2 * hidden, **kwargs)
    quantize(loaded.model, RTNConfig(bits=4, group_size=group, sym=sym))
    prepare_runtime(loaded.model, "dequant")
    return loaded


def gguf_weight(reader: gguf.GGUFReader, module: str, config) -> torch.Tensor:
    """A tensor de-quantized by gguf's reference code, with llama.cpp's q/k row order undone."""
    tensors = {t.name: t for t in reader.tensors}
    if module == "lm_head":
        tensor = tensors.get("output.weight", tensors["token_embd.weight"])
    else:
        parts = module.split(".")
        tensor = tensors[f"blk.{parts[2]}.{GGUF_NAMES[parts[-1]]}.weight"]
    w = torch.from_numpy(gguf.dequantize(tensor.data, tensor.tensor_type).copy()).float()
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}.get(module.split(".")[-1])
    if heads:
        w = w[torch.argsort(qk_permutation(w.shape[0], heads))]
    return w


def test_qk_permutation_is_what_transformers_reverses():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.arange(64 * 3).view(64, 3).float()
    permuted = w[qk_permutation(64, 4)].numpy()
    restored = LlamaTensorProcessor()._reverse_permute_weights(permuted, 4, 4)
    assert np.array_equal(restored, w.numpy())


def test_f16_round_trip_same_logits(tiny, tmp_path):
    result = export(tiny, ExportConfig(type="f16", output=str(tmp_path / "m.gguf")))
    model, _ = load_gguf(result.path)
    ids = tiny.tokenizer("def f(x):\n    return x + 1", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (model(ids).logits - tiny.model(ids).logits).abs().max()
    assert diff < 2e-3  # fp16 weights
    assert result.parity["passed"] and result.parity["top1_agreement"] == 1.0
    assert abs(result.parity["perplexity_change"]) < 1e-3
    assert result.details["metadata"]["file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    assert result.card_path.exists()


@pytest.mark.parametrize(("kind", "max_change"), [("q8_0", 0.005), ("q4_0", 0.05), ("q4_1", 0.05), ("bf16", 0.001)])
def test_float_model_requantized_within_tolerance(tiny, tmp_path, kind, max_change):
    result = export(tiny, ExportConfig(type=kind, output=str(tmp_path / "m.gguf")))
    assert abs(result.parity["perplexity_change"]) < max_change
    assert result.parity["top1_agreement"] >= 0.95
    if kind.startswith("q4"):  # the tied embedding/output kept at q8_0, as llama.cpp keeps it finer
        assert result.details["metadata"]["tensor_types"] == {"F32": 5, "Q8_0": 1, kind.upper(): 14}
        assert result.details["calibration"].startswith("none: float weights rounded to nearest")


@pytest.mark.parametrize(("sym", "group", "hidden", "kind"), [
    (True, 32, 64, "q4_0"), (False, 32, 64, "q4_1"), (True, 32, 64, "q8_0"), (False, 128, 192, "q4_1")])
def test_code_for_code_equals_lmopt_dequantized(tmp_path, sym, group, hidden, kind):
    loaded = rtn_model(sym, group, hidden)
    result = export(loaded, ExportConfig(type=kind, output=str(tmp_path / "m.gguf")))
    reader = gguf.GGUFReader(result.path)
    for name, layer in quant_layers(loaded.model).items():
        ours, theirs = layer.dequantize(), gguf_weight(reader, name, loaded.model.config)
        if name == "lm_head":  # 8-bit asymmetric: no ggml block holds it, so f16 of its weights
            torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=1e-6)
        elif kind == "q4_1" and not sym:  # m = -zero * scale rounds to fp16
            bound = (layer.zeros.float() * layer.scales.float()).max() * 2 ** -11
            assert (theirs - ours).abs().max() <= bound
        else:
            assert torch.equal(theirs, ours), name
    assert result.details["tensor_types"][f"{kind}:exact"] == 14
    assert result.details["calibration"].startswith("kept: 14 quantized tensor(s) written code for code")
    assert result.parity["passed"] and result.parity["top1_agreement"] == 1.0


def test_auto_type_follows_the_grid(tmp_path):
    sym = export(rtn_model(True, 32), ExportConfig(output=str(tmp_path / "s.gguf"), parity={"enabled": False}))
    asym = export(rtn_model(False, 32), ExportConfig(output=str(tmp_path / "a.gguf"), parity={"enabled": False}))
    assert (sym.type, asym.type) == ("q4_0", "q4_1")


def test_tokenizer_and_chat_template_round_trip(tiny, tmp_path):
    from transformers import AutoTokenizer

    result = export(tiny, ExportConfig(type="f16", output=str(tmp_path / "m.gguf"), parity={"enabled": False}))
    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    text = "<|im_start|>user\nWhat does  range(3) return?<|im_end|>\n"
    assert back(text)["input_ids"] == tiny.tokenizer(text)["input_ids"]
    assert back.chat_template == tiny.tokenizer.chat_template
    assert (back.bos_token, back.eos_token) == (tiny.tokenizer.bos_token, tiny.tokenizer.eos_token)
    meta = result.details["metadata"]
    assert meta["tokenizer_model"] == "gpt2" and meta["pre_tokenizer"] == "gpt-2"
    merges = json.loads(tiny.tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert meta["tokens"] == len(tiny.tokenizer) and meta["merges"] == len(merges) == 253


def test_untied_model_writes_output_tensor(tmp_path):
    loaded = tiny_llama(tie_word_embeddings=False)
    result = export(loaded, ExportConfig(type="f16", output=str(tmp_path / "m.gguf")))
    names = {t.name for t in gguf.GGUFReader(result.path).tensors}
    assert {"output.weight", "token_embd.weight"} <= names
    assert result.parity["passed"]


def test_asymmetric_grid_to_q4_0_is_refused_without_a_file(tmp_path):
    with pytest.raises(LmoptError, match="q4_1"):
        export(rtn_model(False, 32), ExportConfig(type="q4_0", output=str(tmp_path / "m.gguf")))
    assert list(tmp_path.iterdir()) == []
    result = export(rtn_model(False, 32), ExportConfig(type="q4_0", requantize=True,
                                                       output=str(tmp_path / "m.gguf")))
    assert result.details["tensor_types"]["q4_0:requantized"] == 14
    assert result.details["calibration"].startswith("lost: 14 quantized tensor(s) re-quantized")


def test_group_that_splits_blocks_is_refused(tmp_path):
    with pytest.raises(LmoptError, match="32-weight blocks"):
        export(rtn_model(True, 16), ExportConfig(type="q4_0", output=str(tmp_path / "m.gguf")))


def test_existing_output_needs_force(tiny, tmp_path):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"old")
    with pytest.raises(LmoptError, match="already exists"):
        export(tiny, ExportConfig(type="f16", output=str(target)))
    assert target.read_bytes() == b"old"
    export(tiny, ExportConfig(type="f16", output=str(target), force=True, parity={"enabled": False}))
    assert gguf.GGUFReader(target).fields["general.architecture"].contents() == "llama"


def test_architecture_gguf_cannot_hold(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lmopt.models import LoadedModel, tiny_tokenizer

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128))
    with pytest.raises(LmoptError, match="architecture 'qwen2'"):
        export(LoadedModel(model, tiny_tokenizer(), "qwen"), ExportConfig(output=str(tmp_path / "m.gguf")))
    assert list(tmp_path.iterdir()) == []


def test_bad_config_lines():
    with pytest.raises(LmoptError, match="type"):
        ExportConfig.parse({"format": "onnx", "type": "q4_0"})
    with pytest.raises(LmoptError, match="unknown field"):
        ExportConfig.parse({"format": "gguf", "bits": 4})


def test_export_step_writes_file_and_card(tiny_dir, tmp_path):
    from lmopt.export.step import EXPORT
    from lmopt.step import StepContext

    config = EXPORT.parse({"type": "q8_0", "parity": {"max_tokens": 128}}, "steps.0.export")
    result = EXPORT.run(StepContext(model=tiny_dir, data=None, output=tmp_path / "out"), config)
    assert result.model == tmp_path / "out" / "model.gguf" and result.model.exists()
    assert result.metrics["parity_passed"] is True and result.metrics["type"] == "q8_0"
    assert (tmp_path / "out" / "model.gguf.lmopt.json").exists()


def test_quantized_model_is_not_modified(tmp_path):
    loaded = rtn_model(True, 32)
    before = copy.deepcopy(loaded.model.state_dict())
    export(loaded, ExportConfig(type="q4_0", output=str(tmp_path / "m.gguf"), parity={"enabled": False}))
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
