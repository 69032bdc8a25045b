"""Sampling filters against transformers' logits warpers; seeds; the sampled distribution."""

from __future__ import annotations

import pytest
import torch

from lmopt.serve.sampling import SamplingParams, filter_top_k, filter_top_p, sample


def test_top_k_and_top_p_filters_match_transformers_warpers() -> None:
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    for k in (1, 5, 50):
        ours = filter_top_k(logits, torch.full((4,), k))
        assert torch.equal(ours.isinf(), TopKLogitsWarper(k)(None, logits.clone()).isinf())
    for p in (0.3, 0.9, 0.999):
        ours = filter_top_p(logits, torch.full((4,), p))
        assert torch.equal(ours.isinf(), TopPLogitsWarper(p)(None, logits.clone()).isinf())


def test_per_row_settings_and_greedy_rows() -> None:
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=0), SamplingParams(top_k=1, temperature=1.5),
              SamplingParams(temperature=1.0, top_k=3, seed=7)]
    tokens = sample(logits, params, [p.make_generator() for p in params])
    assert tokens[0] == int(logits[0].argmax())  # temperature 0: greedy
    assert tokens[1] == int(logits[1].argmax())  # top_k 1: greedy whatever the temperature
    # row 2 alone, many draws: only the top 3 tokens, at their renormalized softmax frequencies
    gen = params[2].make_generator()
    draws = torch.tensor([sample(logits[2:], params[2:], [gen])[0] for _ in range(3000)])
    top = logits[2].topk(3)
    assert set(draws.tolist()) == set(top.indices.tolist())
    freq = torch.stack([(draws == i).float().mean() for i in top.indices])
    torch.testing.assert_close(freq, torch.softmax(top.values, -1), atol=0.03, rtol=0)


def test_seeded_sampling_is_reproducible_and_follows_the_distribution() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 1e-9]]))
    params = SamplingParams(temperature=1.0, seed=123)
    gen_a, gen_b = params.make_generator(), params.make_generator()
    draws_a = [sample(logits, [params], [gen_a])[0] for _ in range(3000)]
    draws_b = [sample(logits, [params], [gen_b])[0] for _ in range(3000)]
    assert draws_a == draws_b
    freq = torch.bincount(torch.tensor(draws_a), minlength=4).float() / 3000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.03, rtol=0)


def test_temperature_sharpens() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.4]]))
    cold = SamplingParams(temperature=0.2, seed=0)
    gen = cold.make_generator()
    draws = [sample(logits, [cold], [gen])[0] for _ in range(2000)]
    p0 = 0.6**5 / (0.6**5 + 0.4**5)  # temperature 0.2 raises probabilities to the 5th power: 0.884
    assert draws.count(0) / 2000 == pytest.approx(p0, abs=0.03)  # 4 standard deviations of 2000 draws
