"""The training losses as pure tensor math: masked cross-entropy and the distillation divergences.

Shapes: logits (batch, seq, vocab); labels (batch, seq) with -100 where no loss is taken. Position t
predicts token t+1, so logits are shifted left and labels right before comparing. Every loss is the
mean over the positions that carry a label. Softmaxes run in float32: bf16 logits lose too much
precision in the normalizer.

Divergences between teacher P and student Q over the vocabulary (per position, then averaged):
- forward KL  KL(P || Q) = sum P (log P - log Q)       (mass-covering, the classic KD loss)
- reverse KL  KL(Q || P) = sum Q (log Q - log P)       (mode-seeking, MiniLLM)
- generalized JSD(beta) = beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q  (GKD)

`chunked_ce` is `masked_ce` fused with the output projection, for large vocabularies: it takes the final
hidden states and the head's weight and never holds more than `chunk` rows of logits (the 49k-token
head at batch 4 x 512 would otherwise hold 400 MB of fp32 logits, again as log-softmax and again as
their gradient).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from lmopt.models.head import head_input as capture_head_input
from lmopt.models.head import logit_softcap, rows_nll
from lmopt.models.head import output_head as model_output_head

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


class _ChunkedLinearCE(torch.autograd.Function):
    """Sum of CE(hidden @ weight.T, target) / count, with both gradients computed chunk by chunk in
    the forward pass (the logits of a chunk are freed before the next one): hidden (n, d), weight
    (vocab, d), target (n,) with IGNORE rows. Label smoothing eps: target distribution
    (1 - eps) one-hot + eps / vocab, as in torch's cross_entropy."""

    @staticmethod
    def forward(ctx: Any, hidden: Any, weight: Any, target: Any, chunk: int, eps: float) -> Any:
        vocab = weight.shape[0]
        w = weight.detach().float()
        valid = target != IGNORE
        count = max(int(valid.sum()), 1)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_w = torch.zeros_like(w) if weight.requires_grad else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                keep = valid[rows]
                if not bool(keep.any()):
                    continue
                h = hidden[rows][keep].detach().float()  # (c, d): labelled rows of this chunk
                t = target[rows][keep]
                logits = h @ w.T  # (c, vocab)
                log_p = torch.log_softmax(logits, dim=-1)
                del logits
                nll = -log_p.gather(-1, t[:, None]).squeeze(-1)  # (c,)
                total += ((1 - eps) * nll - eps * log_p.mean(-1)).sum() if eps else nll.sum()
                g = log_p.exp_()  # softmax, in place: d loss / d logits = p - target distribution
                if eps:
                    g -= eps / vocab
                g[torch.arange(len(t), device=g.device), t] -= 1 - eps
                grad_h[start : start + chunk][keep] = g @ w  # (c, d)
                if grad_w is not None:
                    grad_w += g.T @ h  # (vocab, d)
                del g, log_p
        ctx.save_for_backward(grad_h / count, None if grad_w is None else grad_w / count)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_out: Any) -> tuple:
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        dh = (grad_h * grad_out).to(h_dtype) if ctx.needs_input_grad[0] else None
        dw = (grad_w * grad_out).to(w_dtype) if grad_w is not None and ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None


def chunked_ce(
    hidden: Any, weight: Any, labels: Any, chunk: int = 1024, label_smoothing: float = 0.0
) -> Any:
    """`masked_ce(hidden @ weight.T, labels)` holding at most `chunk` rows of logits at a time.

    hidden (batch, seq, d): the final hidden states (the head's input); weight (vocab, d): the head.
    Equal to `masked_ce` on the full logits, value and gradients (fp32 arithmetic either way).
    """
    h, target = hidden[:, :-1], labels[:, 1:]
    flat_h, flat_t = h.reshape(-1, h.shape[-1]), target.reshape(-1)
    if not bool((flat_t != IGNORE).any()):
        return hidden.sum() * 0.0  # keeps the graph so backward() still works
    return _ChunkedLinearCE.apply(flat_h, weight, flat_t, chunk, label_smoothing)


def ce_sum(logits: Any, labels: Any) -> tuple[float, int]:
    """Summed next-token NLL and number of labelled positions (for token-weighted validation loss)."""
    pred, target = shift(logits, labels)
    total = F.cross_entropy(
        pred.float().reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return float(total), int((target != IGNORE).sum())


def output_head(model: Any) -> Any:
    """The output projection of a (possibly DDP- or peft-wrapped) causal LM, when it is a plain
    bias-free Linear (what `chunked_ce` fuses) and the logits are not soft-capped, else None."""
    head = model_output_head(model)
    if isinstance(head, torch.nn.Linear) and head.bias is None and not logit_softcap(model):
        return head
    return None


def head_input(model: Any, head: Any, batch: dict[str, Any]) -> Any:
    """The head's input, the final hidden states (batch, seq, d), computing no logits."""
    return capture_head_input(model, head, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def chunked_ce_sum(hidden: Any, weight: Any, labels: Any, chunk: int | None = None) -> tuple[float, int]:
    """`ce_sum(hidden @ weight.T, labels)` holding at most `chunk` (default `models.head.LOGIT_ROWS`) rows
    of logits at a time (validation of a 49k-vocabulary model at batch 4 x 512 would otherwise hold
    400 MB of logits, twice).

    hidden (batch, seq, d): the head's input; weight (vocab, d). No gradient is kept."""
    h, target = hidden[:, :-1], labels[:, 1:]
    flat_h, flat_t = h.reshape(-1, h.shape[-1]), target.reshape(-1)
    keep = flat_t != IGNORE
    flat_h, flat_t = flat_h[keep], flat_t[keep]  # only labelled rows need logits
    nll = rows_nll(flat_h, flat_t, lambda rows: F.linear(rows, weight), chunk)
    return float(nll.sum()), int(flat_t.numel())


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
