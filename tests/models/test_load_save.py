"""Loading and saving: references resolve, artifacts are atomic and load with plain transformers."""

import json

import pytest
import torch

from lmopt.errors import LmoptError
from lmopt.models import ModelCard, load_model, save_model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_saved_model_loads_with_plain_transformers(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    out = save_model(tiny.model, tiny.tokenizer, tmp_path / "m", ModelCard(step="test", metrics={"x": 1}))
    ids = torch.tensor([[1, 5, 9, 30]])
    plain = AutoModelForCausalLM.from_pretrained(out)
    ours = load_model(out, dtype="float32")
    assert torch.allclose(logits(plain, ids), logits(tiny.model, ids), atol=1e-5)
    assert torch.allclose(logits(ours.model, ids), logits(tiny.model, ids), atol=1e-5)
    card = json.loads((out / "lmopt.json").read_text())
    assert card["step"] == "test" and card["metrics"] == {"x": 1}
    assert ours.card.step == "test"
    assert ours.tokenizer.chat_template == tiny.tokenizer.chat_template and ours.tokenizer.chat_template


def test_hash_follows_the_content_not_the_path_or_card(tiny, tmp_path):
    a = load_model(save_model(tiny.model, tiny.tokenizer, tmp_path / "a", ModelCard(step="one")))
    b = load_model(save_model(tiny.model, tiny.tokenizer, tmp_path / "b", ModelCard(step="two")))
    assert len(a.hash) == 16 and set(a.hash) <= set("0123456789abcdef")  # a sha256 hex prefix
    assert a.hash == b.hash  # same weights, config and tokenizer; the card is not hashed
    with torch.no_grad():
        b.model.model.norm.weight[0] += 1.0
    c = load_model(save_model(b.model, b.tokenizer, tmp_path / "c", ModelCard(step="two")))
    assert c.hash != a.hash


def test_bad_references_give_clear_errors(tmp_path):
    with pytest.raises(LmoptError, match="no such model"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmoptError, match="no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(LmoptError, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(LmoptError, match="unknown dtype"):
        load_model(tmp_path / "empty", dtype="int3")


def test_hub_id_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LmoptError, match="Hugging Face Hub"):
        load_model("lmopt-tests/no-such-model-anywhere")


def test_corrupt_gguf_is_named(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(LmoptError, match="bad.gguf"):
        load_model(bad)
