"""Weight-decay groups, schedules, dropout settings and LoRA merging."""

from __future__ import annotations

import math

import pytest
import torch

from lmopt.errors import LmoptError
from lmopt.train.config import TrainConfig
from lmopt.train.lora import apply_lora, merge_lora, trainable_counts
from lmopt.train.optim import apply_dropout, lr_lambda, make_optimizer, no_decay_names


def _llama_with_biases():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        attention_bias=True,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_no_decay_on_norms_biases_embeddings():
    model = _llama_with_biases()
    skip = no_decay_names(model)
    for name, _ in model.named_parameters():
        expect = "norm" in name or name.endswith("bias") or "embed_tokens" in name
        assert (name in skip) == expect, name


def test_adamw_step_decays_only_matmul_weights():
    """With zero gradients AdamW only applies decay: w <- w (1 - lr wd) on decayed tensors, others fixed."""
    model = _llama_with_biases()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    skip = no_decay_names(model)
    for name, param in model.named_parameters():
        factor = 1.0 if name in skip else 1 - 0.1 * 0.5
        torch.testing.assert_close(param.detach(), before[name] * factor, msg=name)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(before)  # the tied head counted once


def test_lr_schedules():
    assert [lr_lambda(s, 10, 2, "constant") for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    assert lr_lambda(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_lambda(6, 10, 2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_lambda(10, 10, 2, "linear") == pytest.approx(0.0)


def test_apply_dropout_reaches_attention(tiny):
    import copy

    model = copy.deepcopy(tiny.model)
    changed = apply_dropout(model, 0.2)
    assert changed == 2 and model.config.attention_dropout == 0.2
    assert all(layer.self_attn.attention_dropout == 0.2 for layer in model.model.layers)


def test_lora_merge_equals_unmerged_forward(tiny):
    import copy

    model = apply_lora(
        copy.deepcopy(tiny.model), r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj", "down_proj"]
    )
    trainable, total = trainable_counts(model)
    # r x (in + out) per adapted Linear (A is r x in, B is out x r), counted on the base model
    expected = sum(4 * (m.in_features + m.out_features) for name, m in tiny.model.named_modules()
                   if name.rsplit(".", 1)[-1] in ("q_proj", "v_proj", "down_proj"))
    assert expected == 2 * 4 * ((64 + 64) + (64 + 32) + (128 + 64))  # 2 layers, by hand
    assert trainable == expected and total == expected + sum(p.numel() for p in tiny.model.parameters())
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    torch.manual_seed(1)
    for name, param in model.named_parameters():  # B starts at zero: make the adapters do something
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    ids = torch.randint(0, 400, (2, 12))
    model.eval()
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        base = tiny.model(input_ids=ids).logits
        merged_model = merge_lora(model)
        merged = merged_model(input_ids=ids).logits
    assert not hasattr(merged_model, "peft_config")
    assert (unmerged - base).abs().max() > 1e-3  # the adapters matter
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_lora_unknown_targets_error(tiny):
    import copy

    with pytest.raises(LmoptError, match="lora_targets"):
        apply_lora(copy.deepcopy(tiny.model), 4, 8, 0.0, ["c_attn"])
