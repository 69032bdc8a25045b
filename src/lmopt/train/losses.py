"""The training losses as pure tensor math: masked cross-entropy and the distillation divergences.

Shapes: logits (batch, seq, vocab); labels (batch, seq) with -100 where no loss is taken. Position t
predicts token t+1, so logits are shifted left and labels right before comparing. Every loss is the
mean over the positions that carry a label. Softmaxes run in float32: bf16 logits lose too much
precision in the normalizer.

Divergences between teacher P and student Q over the vocabulary (per position, then averaged):
- forward KL  KL(P || Q) = sum P (log P - log Q)       (mass-covering, the classic KD loss)
- reverse KL  KL(Q || P) = sum Q (log Q - log P)       (mode-seeking, MiniLLM)
- generalized JSD(beta) = beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q  (GKD)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

IGNORE = -100


def shift(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Align predictions with targets: (batch, seq-1, vocab) logits and (batch, seq-1) labels."""
    return logits[:, :-1], labels[:, 1:]


def masked_ce(logits: Any, labels: Any, label_smoothing: float = 0.0) -> Any:
    """Mean next-token cross-entropy over labelled positions (0 when there are none)."""
    pred, target = shift(logits, labels)
    if not bool((target != IGNORE).any()):
        return pred.sum() * 0.0  # keeps the graph so backward() still works
    return F.cross_entropy(
        pred.float().reshape(-1, pred.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE,
        label_smoothing=label_smoothing,
    )


def ce_sum(logits: Any, labels: Any) -> tuple[float, int]:
    """Summed next-token NLL and number of labelled positions (for token-weighted validation loss)."""
    pred, target = shift(logits, labels)
    total = F.cross_entropy(
        pred.float().reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return float(total), int((target != IGNORE).sum())


def divergence(teacher_logp: Any, student_logp: Any, kind: str, beta: float = 0.5) -> Any:
    """Per-position divergence (..., ) between log-distributions over the last dim (see docstring)."""
    p_t, p_s = teacher_logp.exp(), student_logp.exp()
    if kind == "forward_kl":
        return (p_t * (teacher_logp - student_logp)).sum(-1)
    if kind == "reverse_kl":
        return (p_s * (student_logp - teacher_logp)).sum(-1)
    if kind == "jsd":
        # log M by logsumexp, stable where one of the two probabilities underflows
        log_m = torch.logsumexp(
            torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1 - beta)]), dim=0
        )
        kl_t = (p_t * (teacher_logp - log_m)).sum(-1)
        kl_s = (p_s * (student_logp - log_m)).sum(-1)
        return beta * kl_t + (1 - beta) * kl_s
    raise ValueError(f"unknown divergence {kind!r}")


def kd_loss(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> Any:
    """Mean divergence over labelled positions at temperature T, scaled by T^2 (full vocabulary)."""
    s, target = shift(student_logits, labels)
    t, _ = shift(teacher_logits, labels)
    mask = target != IGNORE  # (batch, seq-1)
    log_q = torch.log_softmax(s[mask].float() / temperature, dim=-1)  # (n, vocab)
    log_p = torch.log_softmax(t[mask].float() / temperature, dim=-1)
    return divergence(log_p, log_q, kind, beta).mean() * temperature**2


def kd_loss_topk(
    student_logits: Any,
    topk_values: Any,
    topk_indices: Any,
    labels: Any,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> Any:
    """As `kd_loss`, against cached teacher top-k logits (batch, seq, k) and their token ids.

    Both distributions are restricted to the teacher's k tokens and renormalized there; with k equal to
    the vocabulary size this is exactly `kd_loss`.
    """
    s, target = shift(student_logits, labels)
    mask = target != IGNORE
    values, indices = topk_values[:, :-1][mask], topk_indices[:, :-1][mask]  # (n, k)
    student_k = s[mask].float().gather(-1, indices)  # (n, k)
    log_q = torch.log_softmax(student_k / temperature, dim=-1)
    log_p = torch.log_softmax(values.float() / temperature, dim=-1)
    return divergence(log_p, log_q, kind, beta).mean() * temperature**2


def hidden_mse(student_hidden: Any, teacher_hidden: Any, attention_mask: Any) -> Any:
    """Mean squared error per hidden unit over the real (unpadded) positions; shapes (batch, seq, d)."""
    mask = attention_mask.bool()
    diff = student_hidden[mask].float() - teacher_hidden[mask].float()  # (n, d)
    return (diff**2).mean()
