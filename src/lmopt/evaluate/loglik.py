"""Log-likelihood of continuations given contexts, batched: the core of multiple-choice evaluation.

Follows lm-evaluation-harness: trailing spaces of the context move to the continuation, the pair is
tokenized as a whole and the continuation tokens are those past the context's own tokenization; an
empty context is replaced by the BOS/EOS token; inputs longer than the model's window keep their end.

Two savings that change no score: requests whose model inputs are the same token row (the labels of a
classification after one context, each a single token) share one forward pass, and the output head
runs only on the positions that predict continuation tokens (a 250-token BoolQ prompt through
Gemma-3's 262,144-word head would otherwise be 260 MB of float32 logits per row, for two numbers).
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

    from lmopt.models.head import head_input, output_head  # lazy: imports torch

    encoded = [encode_pair(tokenizer, c, x) for c, x in requests]
    # the model's input for a request: context + continuation, cut to the window, minus the last token
    inputs = [tuple((ctx + cont)[-(max_length + 1):][:-1]) for ctx, cont in encoded]
    users: dict[tuple[int, ...], list[int]] = {}  # one input row -> the requests it serves
    for i, row in enumerate(inputs):
        users.setdefault(row, []).append(i)
    # Longest first: batches of similar length waste little padding, and OOM shows up at once.
    unique = sorted(users, key=len, reverse=True)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    head = output_head(model)
    for start in range(0, len(unique), batch_size):
        rows = unique[start:start + batch_size]
        width = max(len(r) for r in rows)
        batch = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            batch[j, : len(row)] = torch.tensor(row)
            mask[j, : len(row)] = 1
        feed = {"input_ids": batch.to(model.device), "attention_mask": mask.to(model.device)}
        with torch.inference_mode():
            # (rows, width, d) final hidden states, or (rows, width, vocab) logits without a plain head
            out = head_input(model, head, **feed) if head is not None else model(**feed).logits
            for j, row in enumerate(rows):
                served = users[row]
                for i, score in zip(served, _score_row(model, head, out[j, :len(row)],
                                                       [encoded[i][1] for i in served]), strict=True):
                    results[i] = score
        if progress:
            progress(sum(len(users[row]) for row in rows))
    return results


def _score_row(model: Any, head: Any, out: Any, continuations: list[list[int]]) -> list[tuple[float, bool]]:
    """(log p, greedy) of each continuation whose tokens end one input row. out (length, d) hidden
    states or (length, vocab) logits of the row; position t predicts token t+1, so a continuation of n
    tokens is predicted by positions length-n .. length-1. A continuation longer than the row (cut to
    the model's window) is scored on the tokens the row still predicts."""
    import torch  # lazy: see loglikelihoods

    from lmopt.models.head import head_logits  # lazy: imports torch

    length = out.shape[0]
    n_max = min(length, max(len(c) for c in continuations))
    last = out[length - n_max:]
    logprobs = torch.log_softmax((head_logits(model, head, last) if head is not None else last).float(), dim=-1)
    scores = []
    for cont in continuations:
        n = min(len(cont), n_max)
        target = torch.tensor(cont[len(cont) - n:], device=logprobs.device)
        mine = logprobs[n_max - n:]  # (n, vocab)
        scores.append((float(mine.gather(-1, target.unsqueeze(-1)).sum()), bool((mine.argmax(-1) == target).all())))
    return scores
