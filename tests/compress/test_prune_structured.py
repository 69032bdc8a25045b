"""Structured pruning: exact surgery (removing dead units changes nothing), GQA-valid head choices,
importances equal to the output energy they claim, the refit, a smaller model plain transformers loads."""

from __future__ import annotations

import pytest
import torch

from lmopt.compress.prune import StructuredConfig, prune
from lmopt.compress.prune import importance as imp
from lmopt.compress.prune.structured import block_influences, kept_mlp_width
from lmopt.compress.prune.surgery import remove_heads, remove_layers, remove_mlp_channels, sync_config
from lmopt.models import tiny_llama


def fresh(**kw):
    return tiny_llama(seed=1, **kw)


def ids(n=2, seq=24, seed=0):
    return torch.randint(3, 500, (n, seq), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_removing_dead_mlp_channels_changes_nothing():
    t = fresh()
    x = ids()
    dead = [3, 10, 77]
    for layer in t.model.model.layers:
        layer.mlp.down_proj.weight.data[:, dead] = 0
    ref = logits(t.model, x)
    keep = [k for k in range(128) if k not in dead]
    for layer in t.model.model.layers:
        remove_mlp_channels(layer.mlp, keep)
    sync_config(t.model)
    assert t.model.config.intermediate_size == 125
    torch.testing.assert_close(logits(t.model, x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["query", "group"])
def test_removing_dead_heads_respects_gqa(mode):
    t = fresh(hidden_size=48, num_heads=6, num_kv_heads=2)  # 3 query heads per KV group, head_dim 8
    hd = t.model.config.head_dim
    dead_q = [1, 4] if mode == "query" else [3, 4, 5]  # one per group, or all of group 1
    for layer in t.model.model.layers:
        for h in dead_q:
            layer.self_attn.o_proj.weight.data[:, h * hd:(h + 1) * hd] = 0
    x = ids()
    ref = logits(t.model, x)
    keep_q = [h for h in range(6) if h not in dead_q]
    keep_kv = [0, 1] if mode == "query" else [0]
    for layer in t.model.model.layers:
        remove_heads(layer.self_attn, keep_q, keep_kv, (6, 2, hd))
    sync_config(t.model)
    expected = (4, 2) if mode == "query" else (3, 1)
    assert (t.model.config.num_attention_heads, t.model.config.num_key_value_heads) == expected
    torch.testing.assert_close(logits(t.model, x), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="even GQA groups"):
        other = fresh(hidden_size=48, num_heads=6, num_kv_heads=2).model.model.layers[0].self_attn
        remove_heads(other, [0, 1, 3], [0, 1], (6, 2, hd))


def test_an_identity_layer_has_zero_block_influence_and_is_removed_first():
    t = fresh(num_layers=3)
    middle = t.model.model.layers[1]
    middle.self_attn.o_proj.weight.data.zero_()
    middle.mlp.down_proj.weight.data.zero_()  # the layer now returns its input unchanged
    x = ids()
    bi = block_influences(t.model, x)
    assert bi[1] == pytest.approx(0, abs=1e-6) and min(bi[0], bi[2]) > 1e-3
    ref = logits(t.model, x)
    report = prune(t.model, StructuredConfig(layers=1), calibration=x)
    assert report["removed_layers"] == [1] and t.model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in t.model.model.layers] == [0, 1]
    torch.testing.assert_close(logits(t.model, x), ref, rtol=1e-5, atol=1e-5)
    remove_layers(t.model, [0])  # generation with a KV cache still works after renumbering
    out = t.model.generate(x[:1, :5], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 8)


def test_head_choices_keep_groups_even():
    scores = torch.tensor([5.0, 1.0, 3.0, 0.5, 4.0, 6.0, 2.0, 7.0, 8.0])  # 9 heads, 3 KV groups
    assert imp.heads_to_remove(0.25, 9, 3, "query") == 1 and imp.heads_to_remove(0.25, 9, 3, "group") == 1
    keep_q, keep_kv = imp.choose_heads(scores, 9, 3, 0.33, "query")
    assert keep_q == [0, 2, 4, 5, 7, 8] and keep_kv == [0, 1, 2]
    keep_q, keep_kv = imp.choose_heads(scores, 9, 3, 0.33, "group")  # group sums 9, 10.5, 17
    assert keep_kv == [1, 2] and keep_q == [3, 4, 5, 6, 7, 8]
    assert imp.heads_to_remove(0.9, 9, 3, "query") == 2  # never a whole group in query mode


def test_importances_equal_the_output_energy_they_remove():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=g) * torch.linspace(0.1, 3, 12)  # (tokens, in)
    w = torch.randn(5, 12, generator=g)  # a down_proj / o_proj (out, in)
    h = x.t() @ x
    energy = [(x[:, k:k + 1] @ w[:, k:k + 1].t()).pow(2).sum() for k in range(12)]
    scores = imp.channel_importance(w, h.diagonal())
    torch.testing.assert_close(scores, torch.stack(energy), rtol=1e-4, atol=1e-3)
    heads = [(x[:, j * 4:(j + 1) * 4] @ w[:, j * 4:(j + 1) * 4].t()).pow(2).sum() for j in range(3)]
    torch.testing.assert_close(imp.head_importance(w, h, 4), torch.stack(heads), rtol=1e-4, atol=1e-3)


def test_refit_is_the_least_squares_optimum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 10, generator=g)
    x[:, 5] = x[:, 2] * 0.8 + 0.1 * torch.randn(400, generator=g)  # correlated inputs: the refit helps
    w = torch.randn(4, 10, generator=g)
    keep = [0, 1, 2, 3, 4, 6, 7]
    refit = imp.refit_inputs(w, x.t() @ x, keep, damp=1e-8)
    exact = torch.linalg.lstsq(x[:, keep].double(), (x @ w.t()).double()).solution.t().float()
    torch.testing.assert_close(refit, exact, rtol=1e-3, atol=1e-3)
    sliced_err = (x[:, keep] @ w[:, keep].t() - x @ w.t()).pow(2).sum()
    assert (x[:, keep] @ refit.t() - x @ w.t()).pow(2).sum() < 0.5 * sliced_err


def test_taylor_importance_sums_unit_slices():
    w, grad = torch.randn(6, 4), torch.randn(6, 4)
    rows = imp.taylor_importance([(w, grad, 0)], 3)  # 3 units of 2 rows each
    prod = (w * grad).abs()
    torch.testing.assert_close(rows, torch.stack([prod[i * 2:(i + 1) * 2].sum() for i in range(3)]))
    cols = imp.taylor_importance([(w, grad, 1)], 2)
    torch.testing.assert_close(cols, torch.stack([prod[:, i * 2:(i + 1) * 2].sum() for i in range(2)]))


def test_kept_width_rounding():
    assert kept_mlp_width(1536, 0.25, 8) == 1152 and kept_mlp_width(128, 0.3, 8) == 88
    assert kept_mlp_width(16, 0.99, 8) == 8


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_structured_prune_saves_a_smaller_plain_hf_model(importance, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmopt.compress.prune import save_pruned

    t = fresh(num_layers=3, hidden_size=48, num_heads=6, num_kv_heads=2)
    x = ids(4, 32)
    config = StructuredConfig(mlp=0.25, heads=0.33, layers=1, importance=importance)
    report = prune(t, config, calibration=x)
    assert report["parameters_after"] < report["parameters_before"]
    assert report["heads"] == [6, 4] and report["intermediate"] == [128, 96] and report["layers_after"] == 2
    ref = logits(t.model, x)
    path = save_pruned(t, tmp_path / "pruned", config, report)
    plain = AutoModelForCausalLM.from_pretrained(path).eval()  # no lmopt code involved
    assert sum(p.numel() for p in plain.parameters()) == report["parameters_after"]
    torch.testing.assert_close(logits(plain, x), ref, rtol=1e-5, atol=1e-5)


def test_structured_refit_lowers_the_in_sample_error_against_dense():
    x = ids(8, 48, seed=3)
    ref = logits(fresh().model, x)
    errors = {}
    for refit in (False, True):
        t = fresh()
        prune(t, StructuredConfig(mlp=0.5, heads=0.5, refit=refit), calibration=x)
        errors[refit] = (logits(t.model, x) - ref).pow(2).mean()
    assert errors[True] < errors[False]
