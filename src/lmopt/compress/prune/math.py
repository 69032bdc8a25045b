"""Pure tensor math of unstructured and N:M pruning: scores, masks and SparseGPT's weight update.

Everything here is tensor in, tensor out, testable on a toy `nn.Linear` weight (out, in):
- `magnitude_scores`: |W| (Han et al. 2015), masked per layer.
- `wanda_scores`: |W_ij| * ||X_j||_2 (Sun et al. 2023, "Wanda"), masked per output row.
- `sparsegpt_prune_weight`: second-order pruning with an OBS update of the weights not yet visited
  (Frantar & Alistarh 2023), the same column sweep and Cholesky trick as GPTQ.
A mask is a bool tensor shaped like the weight, True where the weight is removed (set to zero).
An N:M pattern keeps N weights in every M consecutive input columns (2:4 = 50% sparsity, the pattern
sparse tensor cores accelerate).

torch is imported inside the functions: the prune configs validate `pattern` with `parse_pattern`
from here, and configs must validate without importing torch (about a second).
"""

from __future__ import annotations

from typing import Any


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4): keep N of every M consecutive weights along the input dimension."""
    if pattern is None:
        return None
    parts = pattern.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"pattern '{pattern}' is not N:M (e.g. 2:4)")
    n, m = int(parts[0]), int(parts[1])
    if not 0 < n < m:
        raise ValueError(f"pattern '{pattern}': need 0 < N < M")
    return n, m


def add_input_stats(hessian: Any, sq_norm: Any, count: int, inputs: Any) -> int:
    """Add a batch of layer inputs to running sums in place; return the new token count.

    inputs: (..., in) activations. hessian: (in, in) sum of x x^T (SparseGPT), or None.
    sq_norm: (in,) sum of x_j^2 over tokens (Wanda's ||X_j||^2). Sums in float64-free float32:
    the number of calibration tokens (about 10^5) keeps float32 sums accurate to ~1e-4.
    """
    x = inputs.reshape(-1, inputs.shape[-1]).float()  # (tokens, in)
    sq_norm += x.pow(2).sum(0)
    if hessian is not None:
        hessian.addmm_(x.t(), x)
    return count + x.shape[0]


def magnitude_scores(weight: Any) -> Any:
    """|W|: a weight's importance is its size."""
    return weight.detach().float().abs()


def wanda_scores(weight: Any, input_sq_norm: Any) -> Any:
    """|W_ij| * ||X_j||_2 with input_sq_norm (in,) = sum over tokens of x_j^2 (scale-free per row)."""
    return weight.detach().float().abs() * input_sq_norm.float().clamp_min(0).sqrt().unsqueeze(0)


def sparsity_mask(scores: Any, sparsity: float, per_row: bool = False) -> Any:
    """Remove the `sparsity` fraction of lowest scores, over the whole matrix or in every row."""
    import torch  # lazy: configs validate with parse_pattern (module docstring)

    rows, cols = scores.shape
    if per_row:
        k = int(cols * sparsity)
        mask = torch.zeros_like(scores, dtype=torch.bool)
        if k:
            mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, True)
        return mask
    k = int(scores.numel() * sparsity)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        mask[torch.topk(scores.flatten(), k, largest=False).indices] = True
    return mask.view(rows, cols)


def nm_mask(scores: Any, n: int, m: int) -> Any:
    """Remove the m-n lowest scores in every group of m consecutive columns (in must divide by m)."""
    import torch  # lazy: configs validate with parse_pattern (module docstring)

    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{cols} input columns are not a multiple of M={m}")
    groups = scores.reshape(rows, cols // m, m)  # (out, in/m, m)
    drop = torch.topk(groups, m - n, dim=-1, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, drop, True)
    return mask.view(rows, cols)


def apply_mask(weight: Any, mask: Any) -> None:
    """Zero the masked weights in place."""
    weight.data.masked_fill_(mask.to(weight.device), 0)


def _inverse_cholesky(hessian: Any, damp: float) -> Any:
    """Upper Cholesky factor U of H^-1 (H + damp * mean(diag) * I first): H^-1 = U^T U.

    Row i of U, divided by U[i, i], is the first row of inv(H[i:, i:]) / inv(H[i:, i:])[0, 0], the
    OBS update once the columns before i are fixed; U[i, i]^2 = inv(H[i:, i:])[0, 0].
    """
    import torch  # lazy: configs validate with parse_pattern (module docstring)

    h = hessian.clone().float()
    cols = h.shape[0]
    idx = torch.arange(cols, device=h.device)
    h[idx, idx] += damp * torch.mean(torch.diag(h))
    u = torch.linalg.cholesky(h)
    return torch.linalg.cholesky(torch.cholesky_inverse(u), upper=True)


def sparsegpt_prune_weight(
    weight: Any,
    hessian: Any,
    sparsity: float = 0.5,
    pattern: tuple[int, int] | None = None,
    blocksize: int = 128,
    damp: float = 0.01,
) -> tuple[Any, Any]:
    """SparseGPT: prune `weight` (out, in) given H = sum x x^T (in, in); return (new weight, mask).

    Columns are visited left to right in blocks of `blocksize`. An unstructured mask is chosen per
    block by the OBS saliency w^2 / [H^-1]_ii^2 (adaptive mask selection); an N:M mask is chosen at
    every M-th column from the weights as updated so far. Each removed weight's error is spread on
    the columns to its right through the inverse Hessian, so the layer output moves as little as
    possible. The mean-diagonal damping (1%) follows the reference implementation.
    """
    import torch  # lazy: configs validate with parse_pattern (module docstring)

    w = weight.detach().clone().float()  # (out, in)
    h = hessian.detach().clone().float()  # (in, in)
    dead = torch.diag(h) == 0  # inputs never active in calibration: weights there are free to drop
    h[dead, dead] = 1
    w[:, dead] = 0
    hinv = _inverse_cholesky(h, damp)  # (in, in) upper triangular
    rows, cols = w.shape
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1)  # (block,)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if pattern is None:
            mask1 = sparsity_mask(w1.pow(2) / d.pow(2).unsqueeze(0), sparsity)
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            if pattern is not None and i % pattern[1] == 0:
                n, m = pattern
                cand = w1[:, i:i + m].pow(2) / d[i:i + m].pow(2).unsqueeze(0)  # (out, m)
                mask1[:, i:i + m] = nm_mask(cand, n, m)
            col = w1[:, i]
            q = col.masked_fill(mask1[:, i], 0)
            err = (col - q) / d[i]  # (out,)
            w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = err
        w[:, i1:i2] = w1
        mask[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # lazy batch update of the columns to the right
    w[mask] = 0
    return w.to(weight.dtype), mask


def layer_output_error(weight: Any, new_weight: Any, inputs: Any) -> float:
    """Relative squared error of the layer output: ||X W'^T - X W^T||^2 / ||X W^T||^2."""
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    ref = x @ weight.float().t()
    return float((x @ new_weight.float().t() - ref).pow(2).sum() / ref.pow(2).sum())
