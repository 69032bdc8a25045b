"""Pruning the real embedded SmolLM2-135M (integration tier, small calibration and evaluation)."""

from __future__ import annotations

import copy

import pytest
import torch

from lmopt.compress.calibration import calibration_windows
from lmopt.compress.prune import MagnitudeConfig, StructuredConfig, WandaConfig, prune
from lmopt.data.text import pydoc_text
from lmopt.evaluate import perplexity

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def calib(embedded):
    return calibration_windows(embedded.tokenizer, "pydoc-train", n_samples=8, seq_len=128)


def ppl(model, tokenizer):
    return perplexity(model, tokenizer, pydoc_text("eval")[:40_000], seq_len=256, limit=3)["perplexity"]


def test_wanda_2of4_beats_magnitude_on_the_embedded_model(embedded, calib):
    """SparseGPT is left to the toy tests and the benchmark: its column sweep is the slow part."""
    dense = ppl(embedded.model, embedded.tokenizer)
    result = {}
    for config in (MagnitudeConfig(pattern="2:4"), WandaConfig(pattern="2:4")):
        model = copy.deepcopy(embedded.model)
        prune(model, config, calibration=calib)
        result[config.method] = ppl(model, embedded.tokenizer)
    assert dense < result["wanda"] < result["magnitude"]


def test_structured_embedded_model_is_smaller_and_reloads(embedded, calib, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmopt.compress.prune import save_pruned
    from lmopt.models import LoadedModel

    model = copy.deepcopy(embedded.model)
    config = StructuredConfig(mlp=0.25, heads=0.33, layers=2)
    report = prune(model, config, calibration=calib)
    assert report["heads"] == [9, 6] and report["kv_heads"] == [3, 3]
    assert report["intermediate"] == [1536, 1152]
    # by hand: per layer q 576x384 + k,v 576x192 + o 384x576 + MLP 3 x 576x1152 + 2 norms of 576, on 28
    # layers, plus the tied 49152x576 embedding and the final norm (before: 134,515,008)
    per_layer = 2 * 576 * 384 + 2 * 576 * 192 + 3 * 576 * 1152 + 2 * 576
    assert report["parameters_after"] == 28 * per_layer + 49152 * 576 + 576 == 102_662_208
    assert report["parameters_removed_fraction"] == pytest.approx(1 - 102_662_208 / 134_515_008, abs=1e-3)
    loaded = LoadedModel(model, embedded.tokenizer, embedded.ref, embedded.path, embedded.card)
    path = save_pruned(loaded, tmp_path / "small", config, report)
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    x = calib[:1, :64]
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-4, atol=1e-4)
    assert ppl(plain, embedded.tokenizer) < 1000  # damaged but still a language model before recovery
