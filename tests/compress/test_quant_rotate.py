"""Rotations for 4 bits: the matrices (orthogonal, Hadamard, flattening), their fusion into a llama
model (same logits, an ordinary HF model), rotate+gptq, and the `rotate` step."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lmopt.compress.config import CalibrationConfig
from lmopt.compress.quantize import load_quantized, quantize, save_quantized
from lmopt.compress.quantize import rotate as rot
from lmopt.compress.quantize.config import RotateConfig, RotateGPTQConfig
from lmopt.compress.quantize.rotate_model import rotate_llama
from lmopt.compress.quantize.rotate_step import ROTATE
from lmopt.errors import LmoptError
from lmopt.models import load_model, tiny_llama
from lmopt.models.card import ModelCard
from lmopt.step import StepContext


@pytest.mark.parametrize("n", [1, 2, 12, 20, 64, 72, 144, 576, 1536])
def test_hadamard_orders_built_here(n):
    h = rot.hadamard(n)
    assert h is not None and set(h.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(h @ h.t(), n * torch.eye(n, dtype=torch.float64), rtol=0, atol=0)


def test_paley_matches_its_definition():
    """Order 12 from q = 11: row 0 all ones, column 0 below it -1, H[i+1, j+1] = 1 on the diagonal and
    chi(j - i) off it, chi read from the quadratic residues mod 11 listed by hand."""
    h = rot.paley(11)
    residues = {1, 3, 4, 5, 9}  # squares mod 11
    for i in range(11):
        for j in range(11):
            expected = 1.0 if i == j else (1.0 if (j - i) % 11 in residues else -1.0)
            assert h[i + 1, j + 1] == expected
    assert torch.all(h[0] == 1) and torch.all(h[1:, 0] == -1)
    with pytest.raises(ValueError):
        rot.paley(13)  # 13 = 1 mod 4


@pytest.mark.parametrize("n", [9, 18, 36, 100])
def test_sizes_without_a_hadamard_fall_back_to_kronecker(n):
    assert rot.hadamard(n) is None
    q = rot.rotation(n, seed=3)
    torch.testing.assert_close(q @ q.t(), torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    assert "random orthogonal" in rot.describe(n)
    with pytest.raises(ValueError, match="kronecker"):
        rot.rotation(n, construction="hadamard")


@pytest.mark.parametrize("construction", ["auto", "kronecker"])
def test_rotation_576_is_orthogonal_and_seeded(construction):
    q = rot.rotation(576, seed=0, construction=construction)
    torch.testing.assert_close(q @ q.t(), torch.eye(576, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(q, rot.rotation(576, seed=0, construction=construction))
    assert not torch.equal(q, rot.rotation(576, seed=1, construction=construction))


def test_hadamard_flattens_a_spike_fully_and_kronecker_partly():
    spike = torch.zeros(576, dtype=torch.float64)
    spike[100] = 24.0
    flat = spike @ rot.rotation(576, 0, "hadamard")
    torch.testing.assert_close(flat.abs(), torch.ones(576, dtype=torch.float64))  # 24 / sqrt(576) each
    kron = spike @ rot.rotation(576, 0, "kronecker")
    assert kron.norm() == pytest.approx(24.0) and kron.abs().max() > 1.2


def test_head_rotations_equal_block_diagonal_products():
    r = rot.rotation(16, seed=2)
    block = torch.block_diag(*[r] * 3)  # 3 heads of 16
    v = torch.randn(48, 40, dtype=torch.float64)
    o = torch.randn(40, 48, dtype=torch.float64)
    torch.testing.assert_close(rot.rotate_heads_output(v, r), block.t() @ v)
    torch.testing.assert_close(rot.rotate_heads_input(o, r), o @ block)


def _random_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Norm weights away from 1, so that folding them is tested."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_rotated_tiny_model_gives_the_same_logits(tied):
    model = _random_norms(tiny_llama(tie_word_embeddings=tied).model)
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    embedding = model.model.embed_tokens.weight.detach().clone()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        info = rotate_llama(model, seed=1)
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert info["untied_embedding"] is tied and not model.config.tie_word_embeddings
    assert all(torch.all(p == 1) for n, p in model.named_parameters() if "norm" in n)
    # the residual stream really is rotated: the embedding is E Q
    torch.testing.assert_close(model.model.embed_tokens.weight, embedding @ rot.rotation(64, 1).float())


def test_rotated_model_saves_and_reloads_as_plain_hf(tmp_path):
    loaded = tiny_llama()
    model = _random_norms(copy.deepcopy(loaded.model))
    rotate_llama(model)
    model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    again = load_model(tmp_path, dtype="float32").model
    ids = torch.randint(0, 500, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_unsupported_model_type_is_one_clear_error():
    model = tiny_llama().model
    model.config.model_type = "gpt2"
    with pytest.raises(LmoptError, match="model type 'gpt2'"):
        rotate_llama(model)


def test_rotate_gptq_quantizes_saves_and_reloads(tiny, tmp_path):
    model = _random_norms(copy.deepcopy(tiny.model))
    config = RotateGPTQConfig(calibration=CalibrationConfig(n_samples=8, seq_len=32, source="pydoc-train"))
    report = quantize(model, config, tokenizer=tiny.tokenizer)
    assert report["method"] == "rotate+gptq" and report["rotation"]["untied_embedding"]
    assert report["lm_head"] == "rtn int8" and report["safeguard"]
    path = save_quantized(model, tiny.tokenizer, tmp_path / "q")
    again = load_quantized(path, ModelCard.read(path), torch.float32, backend="dequant")
    ids = torch.randint(0, 500, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_rotate_step_writes_an_ordinary_model(tiny_dir, tmp_path):
    ctx = StepContext(model=tiny_dir, data=None, output=tmp_path / "rotated")
    result = ROTATE.run(ctx, RotateConfig(seed=2))
    assert result.metrics["max_logit_change"] < 1e-4 * max(1.0, result.metrics["logit_scale"])
    card = ModelCard.read(Path(result.model))
    assert card.step == "rotate" and card.format == "hf" and card.format_info["rotation"]["seed"] == 2
    original, rotated = load_model(tiny_dir, dtype="float32").model, load_model(result.model, dtype="float32").model
    ids = torch.randint(0, 500, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(rotated(input_ids=ids).logits, original(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.integration
def test_rotated_embedded_model_gives_the_same_logits(embedded):
    """SmolLM2-135M (hidden 576 = 4 x 12 x 12, head_dim 64): same logits within fp32 rounding."""
    model = copy.deepcopy(embedded.model)
    ids = embedded.tokenizer("The capital of France is Paris. def f(x): return x + 1", return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(input_ids=ids).logits
        info = rotate_llama(model)
        after = model(input_ids=ids).logits
    assert info["hidden"].startswith("Hadamard 576")
    torch.testing.assert_close(after, before, rtol=0, atol=2e-3 * float(before.abs().max()))
    assert torch.equal(after.argmax(-1), before.argmax(-1))
