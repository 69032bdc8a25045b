"""Perplexity with a fixed, documented protocol.

Protocol: the whole text is tokenized once (no special tokens added) and cut into non-overlapping
windows of `seq_len` tokens; the remainder shorter than a window is dropped (a text shorter than one
window is used as a single window). Every window is scored independently from a fresh context, so
each window predicts `seq_len - 1` tokens. Perplexity = exp(total NLL / total predicted tokens).
`limit` keeps the first N windows. This is the GPTQ/SparseGPT convention used for WikiText-2 figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def tokenize_windows(tokenizer: Any, text: str, seq_len: int, limit: int | None = None) -> Any:
    """Token ids as a (n_windows, seq_len) tensor following the protocol above."""
    import torch  # lazy: `lmopt.evaluate` is imported at CLI start-up; torch takes ~1 s

    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False,
                    verbose=False)["input_ids"]
    ids = torch.tensor(ids, dtype=torch.long)
    if ids.numel() < 2:
        raise ValueError("text has fewer than 2 tokens")
    if ids.numel() < seq_len:
        return ids.unsqueeze(0)
    n = ids.numel() // seq_len
    if limit is not None:
        n = min(n, limit)
    return ids[: n * seq_len].view(n, seq_len)


def token_nll(model: Any, windows: Any) -> Any:
    """Next-token NLL (nats) at each position of a (batch, seq) batch of windows: (batch, seq-1) float64.

    The head runs on 1,024 positions at a time (`lmopt.models.head.rows_nll`): the whole batch's
    logits, and their float32 log-softmax, would be 2 x 3.2 GB at 8 x 2048 tokens and 49k words."""
    import torch  # lazy: `lmopt.evaluate` is imported at CLI start-up; torch takes ~1 s

    from lmopt.models.head import head_input, head_logits, output_head, rows_nll

    ids = windows.to(model.device)
    targets = ids[:, 1:].reshape(-1)  # (batch * (seq-1),)
    head = output_head(model)
    with torch.inference_mode():
        if head is None:  # no separable head: the model's own logits (batch, seq, vocab)
            hidden, head_fn = model(input_ids=ids).logits, lambda rows: rows
        else:
            hidden, head_fn = head_input(model, head, input_ids=ids), lambda rows: head_logits(model, head, rows)
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (batch * (seq-1), d or vocab)
        return rows_nll(hidden, targets, head_fn).view(ids.shape[0], ids.shape[1] - 1)


def window_nll(model: Any, windows: Any) -> tuple[float, int]:
    """Summed next-token NLL and number of predicted tokens for a (batch, seq) batch of windows."""
    nll = token_nll(model, windows)
    return float(nll.sum()), nll.numel()


def perplexity(
    model: Any,
    tokenizer: Any,
    text: str,
    seq_len: int = 2048,
    limit: int | None = None,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Perplexity of `model` on `text` (see the module docstring for the protocol).

    Returns {"perplexity", "nll", "tokens" (predicted tokens), "windows", "seq_len"}.
    """
    windows = tokenize_windows(tokenizer, text, seq_len, limit)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(windows), batch_size):
        nll, count = window_nll(model, windows[start:start + batch_size])
        total_nll, total_tokens = total_nll + nll, total_tokens + count
        if progress:
            progress(min(start + batch_size, len(windows)), len(windows))
    mean = total_nll / total_tokens
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": total_tokens,
            "windows": len(windows), "seq_len": windows.shape[1]}
