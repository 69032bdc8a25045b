"""Perplexity follows its protocol and agrees with a plain token-by-token loop."""

import importlib
import math

import pytest
import torch

from lmopt.data import pydoc_text
from lmopt.evaluate.perplexity import perplexity, tokenize_windows
from lmopt.models import head


def plain_loop_nll(model, window: torch.Tensor) -> tuple[float, int]:
    """-log p(token t+1 | tokens <= t), one forward pass per prefix (no batching, no shifting tricks)."""
    total = 0.0
    with torch.no_grad():
        for t in range(len(window) - 1):
            logits = model(input_ids=window[: t + 1].unsqueeze(0)).logits[0, -1]
            total -= float(torch.log_softmax(logits.double(), -1)[window[t + 1]])
    return total, len(window) - 1


def test_windows_drop_the_remainder_and_respect_limit(tiny):
    text = pydoc_text("eval")[:3000]
    ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = tokenize_windows(tiny.tokenizer, text, 32)
    assert windows.shape == (len(ids) // 32, 32)
    assert windows.flatten().tolist() == ids[: windows.numel()]
    assert tokenize_windows(tiny.tokenizer, text, 32, limit=3).shape == (3, 32)


def test_short_text_is_one_window(tiny):
    windows = tokenize_windows(tiny.tokenizer, "def f(x): return x", 2048)
    ids = tiny.tokenizer("def f(x): return x", add_special_tokens=False)["input_ids"]
    assert windows.tolist() == [ids]  # shorter than seq_len: the whole text, not dropped as a remainder


def test_perplexity_matches_a_plain_loop(tiny):
    text = pydoc_text("eval")[:4000]
    result = perplexity(tiny.model, tiny.tokenizer, text, seq_len=24, limit=3, batch_size=2)
    windows = tokenize_windows(tiny.tokenizer, text, 24, limit=3)
    nll, count = 0.0, 0
    for window in windows:
        n, c = plain_loop_nll(tiny.model, window)
        nll, count = nll + n, count + c
    assert result["tokens"] == count == 3 * 23
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_batch_size_does_not_change_the_result(tiny):
    text = pydoc_text("eval")[:6000]
    one = perplexity(tiny.model, tiny.tokenizer, text, seq_len=64, batch_size=1)
    four = perplexity(tiny.model, tiny.tokenizer, text, seq_len=64, batch_size=4)
    assert one["perplexity"] == pytest.approx(four["perplexity"], rel=1e-5)


def full_logits_nll(model, windows: torch.Tensor) -> torch.Tensor:
    """The reference: every position's logits from the model's own forward, log-softmax in float64."""
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1].double()
    return -torch.log_softmax(logits, -1).gather(-1, windows[:, 1:].unsqueeze(-1)).squeeze(-1)


def test_head_in_blocks_equals_the_models_own_logits(tiny, monkeypatch):
    """token_nll runs the output head a few positions at a time (memory); same NLL as the full logits."""
    ppl = importlib.import_module("lmopt.evaluate.perplexity")  # the module (the package exports the function)
    windows = tokenize_windows(tiny.tokenizer, pydoc_text("eval")[:4000], 24, limit=3)
    monkeypatch.setattr(head, "LOGIT_ROWS", 7)  # 3 x 23 positions: 10 blocks, the last one short
    torch.testing.assert_close(ppl.token_nll(tiny.model, windows), full_logits_nll(tiny.model, windows),
                               rtol=1e-5, atol=1e-5)


def test_soft_capped_logits_are_capped_in_blocks_too(monkeypatch):
    """Gemma 2 caps its logits (cap * tanh(logits / cap)) after the head: the blocks must too."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    ppl = importlib.import_module("lmopt.evaluate.perplexity")  # the module (the package exports the function)
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                          final_logit_softcapping=0.5)  # small cap: capping changes every logit
    model = Gemma2ForCausalLM(config).eval()
    windows = torch.randint(0, 96, (2, 16))
    monkeypatch.setattr(head, "LOGIT_ROWS", 5)
    torch.testing.assert_close(ppl.token_nll(model, windows), full_logits_nll(model, windows),
                               rtol=1e-5, atol=1e-5)
