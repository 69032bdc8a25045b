"""Scoring multiple-choice items: `acc` (highest log-likelihood) and `acc_norm` (per byte of choice).

acc_norm divides each choice's log-likelihood by the length of its text in UTF-8 bytes, as
lm-evaluation-harness does, so long choices are not penalized for having more tokens.
For greedy tasks (LAMBADA) `acc` is the share of items whose continuation is the greedy output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from lmopt.data.tasks import MCItem
from lmopt.evaluate.loglik import loglikelihoods


def score_items(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCItem],
    greedy: bool = False,
    batch_size: int = 8,
    max_length: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Accuracy figures for `items`; see the module docstring."""
    requests = [req for item in items for req in item.requests]
    scores = loglikelihoods(model, tokenizer, requests, batch_size=batch_size, max_length=max_length,
                            progress=progress)
    correct = correct_norm = 0
    total_logprob, pos = 0.0, 0
    for item in items:
        chunk = scores[pos:pos + len(item.requests)]
        pos += len(item.requests)
        if greedy:
            correct += chunk[0][1]
            total_logprob += chunk[0][0]
            continue
        lls = [s for s, _ in chunk]
        normed = [s / max(1, len(t.encode("utf-8"))) for s, t in zip(lls, item.norm_texts, strict=True)]
        correct += int(max(range(len(lls)), key=lls.__getitem__) == item.gold)
        correct_norm += int(max(range(len(normed)), key=normed.__getitem__) == item.gold)
    n = len(items)
    if greedy:
        return {"acc": correct / n, "perplexity": math.exp(-total_logprob / n), "n": n}
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n}
