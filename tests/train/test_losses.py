"""The losses against brute-force formulas written with Python loops and `math`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmopt.train.losses import (
    IGNORE,
    ce_sum,
    chunked_ce,
    divergence,
    hidden_mse,
    kd_loss,
    kd_loss_topk,
    masked_ce,
)


def _softmax(row, t=1.0):
    z = [v / t for v in row]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def _brute(p, q, kind, beta=0.5):
    if kind == "forward_kl":
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    if kind == "reverse_kl":
        return sum(b * math.log(b / a) for a, b in zip(p, q, strict=True))
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q, strict=True)]
    return beta * sum(a * math.log(a / c) for a, c in zip(p, m, strict=True)) + (1 - beta) * sum(
        b * math.log(b / c) for b, c in zip(q, m, strict=True)
    )


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_matches_brute_force(kind, temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7) * 2
    labels = torch.tensor([[1, 2, 3, IGNORE, 4], [IGNORE, 1, IGNORE, 2, 3]])
    got = kd_loss(student, teacher, labels, kind, temperature, beta=0.3)
    terms = []
    for b in range(2):
        for t in range(4):  # position t predicts label t+1
            if labels[b, t + 1] != IGNORE:
                p = _softmax(teacher[b, t].tolist(), temperature)
                q = _softmax(student[b, t].tolist(), temperature)
                terms.append(_brute(p, q, kind, beta=0.3))
    expected = sum(terms) / len(terms) * temperature**2
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_divergences_are_zero_on_equal_and_jsd_bounded():
    logp = torch.log_softmax(torch.randn(3, 11), dim=-1)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert divergence(logp, logp, kind).abs().max().item() < 1e-6
    # Nearly disjoint distributions reach the JSD bound, log 2 (p = [1 - e^-50, e^-50] and its mirror).
    far = torch.log_softmax(torch.tensor([[50.0, 0.0], [0.0, 50.0]], dtype=torch.float64), dim=-1)
    jsd = divergence(far, far.flip(-1), "jsd", beta=0.5)
    torch.testing.assert_close(jsd, torch.full((2,), math.log(2), dtype=torch.float64), rtol=0, atol=1e-9)


def test_topk_with_full_vocab_equals_full_kd():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 6, 9), torch.randn(2, 6, 9)
    labels = torch.randint(0, 9, (2, 6))
    top = teacher.topk(9, dim=-1)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        full = kd_loss(student, teacher, labels, kind, 2.0)
        sparse = kd_loss_topk(student, top.values, top.indices, labels, kind, 2.0)
        assert sparse.item() == pytest.approx(full.item(), rel=1e-5)


def test_masked_ce_matches_manual_nll_and_label_smoothing():
    torch.manual_seed(2)
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[IGNORE, 3, IGNORE, 1]])
    manual = (
        -(math.log(_softmax(logits[0, 0].tolist())[3]) + math.log(_softmax(logits[0, 2].tolist())[1])) / 2
    )
    assert masked_ce(logits, labels).item() == pytest.approx(manual, rel=1e-5)
    total, count = ce_sum(logits, labels)
    assert count == 2 and total / count == pytest.approx(manual, rel=1e-5)
    eps, rows = 0.1, [(0, 3), (2, 1)]
    smooth = (
        sum(
            -(1 - eps) * math.log(_softmax(logits[0, t].tolist())[y])
            - eps / 5 * sum(math.log(v) for v in _softmax(logits[0, t].tolist()))
            for t, y in rows
        )
        / 2
    )
    assert masked_ce(logits, labels, label_smoothing=eps).item() == pytest.approx(smooth, rel=1e-5)


def test_masked_ce_without_labels_is_zero_with_graph():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    loss = masked_ce(logits, torch.full((1, 3), IGNORE))
    loss.backward()  # raises if the zero is a constant cut off from the graph
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_hidden_mse_ignores_padding():
    s, t = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert hidden_mse(s, t, torch.tensor([[1, 1, 0]])).item() == pytest.approx((1 + 1 + 9 + 9) / 4)


@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_ce_equals_torch_cross_entropy(chunk, smoothing):
    """Value and both gradients equal torch's cross_entropy on the full logits (masked rows too)."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 9, 16, dtype=torch.float64).float().requires_grad_(True)
    weight = (torch.randn(50, 16) * 0.3).requires_grad_(True)
    labels = torch.randint(0, 50, (3, 9))
    labels[0, :4] = IGNORE
    labels[2, 5:] = IGNORE
    ref_h, ref_w = hidden.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(
        (ref_h[:, :-1] @ ref_w.T).reshape(-1, 50),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        label_smoothing=smoothing,
    )
    got = chunked_ce(hidden, weight, labels, chunk=chunk, label_smoothing=smoothing)
    (got * 3).backward()
    (ref * 3).backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(hidden.grad, ref_h.grad, atol=1e-6)
    assert torch.allclose(weight.grad, ref_w.grad, atol=1e-6)
    assert bool((hidden.grad[0, :3] == 0).all())  # rows predicting ignored labels get no gradient


def test_chunked_ce_frozen_head_bf16_hidden_and_no_labels():
    torch.manual_seed(1)
    weight = torch.randn(40, 8)  # frozen head (LoRA): no weight gradient is computed
    hidden = torch.randn(2, 6, 8).bfloat16().requires_grad_(True)
    labels = torch.randint(0, 40, (2, 6))
    got = chunked_ce(hidden, weight, labels, chunk=4)
    got.backward()
    ref_h = hidden.detach().float().requires_grad_(True)
    ref = masked_ce(ref_h @ weight.T, labels)
    ref.backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert hidden.grad.dtype == torch.bfloat16
    assert torch.allclose(hidden.grad.float(), ref_h.grad, atol=1e-2 * float(ref_h.grad.abs().max()))
    none = torch.full((2, 6), IGNORE)
    zero = chunked_ce(hidden, weight, none)
    zero.backward()
    assert zero.item() == 0.0
