"""Log-likelihood of continuations given contexts, batched: the core of multiple-choice evaluation.

Follows lm-evaluation-harness: trailing spaces of the context move to the continuation, the pair is
tokenized as a whole and the continuation tokens are those past the context's own tokenization; an
empty context is replaced by the BOS/EOS token; inputs longer than the model's window keep their end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as the harness does it."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    cont = whole[len(ctx):]
    if not ctx:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ctx = [prefix]
    return ctx, cont


def loglikelihoods(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 8,
    max_length: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """For each (context, continuation): (sum of log p(continuation tokens), greedy-match flag)."""
    import torch  # lazy: `lmopt.evaluate` is imported at CLI start-up; torch takes ~1 s

    encoded = [encode_pair(tokenizer, c, x) for c, x in requests]
    # Longest first: batches of similar length waste little padding, and OOM shows up at once.
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [(encoded[i][0] + encoded[i][1])[-(max_length + 1):][:-1] for i in idx]
        conts = [encoded[i][1] for i in idx]
        width = max(len(r) for r in rows)
        batch = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            batch[j, : len(row)] = torch.tensor(row)
            mask[j, : len(row)] = 1
        with torch.inference_mode():
            logits = model(input_ids=batch.to(model.device), attention_mask=mask.to(model.device)).logits
        for j, i in enumerate(idx):
            n, length = len(conts[j]), len(rows[j])
            # logits at position t predict token t+1: the continuation's n tokens are predicted
            # by positions length-n .. length-1.
            logprobs = torch.log_softmax(logits[j, length - n:length].float(), dim=-1)  # (n, vocab)
            target = torch.tensor(conts[j], device=logprobs.device)
            total = float(logprobs.gather(-1, target.unsqueeze(-1)).sum())
            greedy = bool((logprobs.argmax(-1) == target).all())
            results[i] = (total, greedy)
        if progress:
            progress(len(idx))
    return results
