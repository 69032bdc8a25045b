"""Pure tensor math of structured pruning: unit importances, which units to keep, least-squares refit.

Units and their activation importance (the energy a unit adds to the block output on calibration data,
so the cheapest units to remove are those whose removal moves the output least):
- MLP channel k: ||W_down[:, k]||^2 * H_kk, with H = sum x x^T of the down_proj inputs (in, in).
- attention head j: trace(W_o[:, S_j] H[S_j, S_j] W_o[:, S_j]^T), S_j the head's o_proj input columns.
- KV group: the sum of its query heads' importances.
- decoder layer: block influence BI = 1 - mean over tokens of cos(x_in, x_out) (ShortGPT, Men et al.
  2024): a layer that barely turns its input is the cheapest to skip.
The optional first-order Taylor importance (LLM-Pruner, Ma et al. 2023) is sum |w * dL/dw| over a
unit's weights, gradients of the LM loss on calibration data.
"""

from __future__ import annotations

from typing import Any

import torch


def channel_importance(down_weight: Any, hessian_diag: Any) -> Any:
    """(inter,) energy of each MLP channel at the block output: ||W_down[:, k]||^2 * E[h_k^2]."""
    return down_weight.detach().float().pow(2).sum(0) * hessian_diag.float()


def head_importance(o_weight: Any, hessian: Any, head_dim: int) -> Any:
    """(heads,) output energy of each head: trace(W_j H_jj W_j^T) for o_proj weight (hidden, heads*hd)."""
    w = o_weight.detach().float()
    heads = w.shape[1] // head_dim
    scores = torch.empty(heads, device=w.device)
    for j in range(heads):
        s = slice(j * head_dim, (j + 1) * head_dim)
        wj = w[:, s]  # (hidden, head_dim)
        scores[j] = torch.einsum("ik,kl,il->", wj, hessian[s, s].float(), wj)
    return scores


def taylor_importance(pairs: list[tuple[Any, Any, int]], units: int) -> Any:
    """(units,) first-order Taylor importance: sum |w * grad| over each unit's weights.

    pairs: (weight, grad, dim) with the units along `dim` in contiguous equal slices, e.g. (gate, g, 0)
    and (down, g, 1) for MLP channels, or q_proj rows / o_proj columns of heads (head_dim each).
    """
    total = torch.zeros(units, device=pairs[0][0].device)
    for weight, grad, dim in pairs:
        contrib = (weight.detach().float() * grad.float()).abs().sum(1 - dim)  # (size along dim,)
        total += contrib.view(units, -1).sum(1)
    return total


def block_influence(x_in: Any, x_out: Any) -> float:
    """1 - mean cosine similarity of a layer's input and output hidden states (batch, seq, hidden)."""
    cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
    return float(1 - cos.mean())


def keep_top(scores: Any, n_keep: int) -> list[int]:
    """Indices of the `n_keep` highest scores, sorted ascending (the order of the original units)."""
    return sorted(torch.topk(scores.float(), n_keep).indices.tolist())


def heads_to_remove(fraction: float, heads: int, kv: int, mode: str) -> int:
    """How many units `fraction` of the query heads rounds to: query heads per group, or whole groups."""
    rep = heads // kv
    if mode == "group":
        return min(kv - 1, round(fraction * kv))
    return min(rep - 1, round(fraction * rep))


def choose_heads(scores: Any, heads: int, kv: int, fraction: float, mode: str) -> tuple[list[int], list[int]]:
    """(kept query heads, kept KV heads) removing `fraction` of heads without breaking GQA groups.

    mode "query": every group drops its least important query heads (the same count everywhere; KV heads
    stay). mode "group": drop whole KV groups with the lowest summed importance (K/V shrink too).
    """
    rep = heads // kv
    drop = heads_to_remove(fraction, heads, kv, mode)
    if mode == "group":
        group_scores = scores.view(kv, rep).sum(1)
        keep_kv = keep_top(group_scores, kv - drop)
        return [g * rep + i for g in keep_kv for i in range(rep)], keep_kv
    keep_q = [g * rep + i for g in range(kv) for i in keep_top(scores[g * rep:(g + 1) * rep], rep - drop)]
    return keep_q, list(range(kv))


def refit_inputs(weight: Any, hessian: Any, keep: list[int], damp: float = 0.01) -> Any:
    """Least-squares weight on the kept inputs that best reproduces the full layer's output.

    argmin_V sum ||V x_K - W x||^2 = W H[:, K] H[K, K]^-1 for H = sum x x^T (in, in); `damp` adds
    damp * mean(diag H[K, K]) to the diagonal (the same ridge as SparseGPT/GPTQ). Returns (out, |K|).
    """
    h = hessian.float()
    idx = torch.as_tensor(keep, dtype=torch.long, device=h.device)
    h_kk = h[idx][:, idx]
    h_kk = h_kk + damp * torch.diag(h_kk).mean() * torch.eye(len(keep), device=h.device)
    rhs = weight.detach().float() @ h[:, idx]  # (out, |K|)
    return torch.linalg.solve(h_kk, rhs, left=False).to(weight.dtype)
