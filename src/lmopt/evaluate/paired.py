"""Per-item and per-window results, and single speed/memory measurements, for paired comparisons.

A regression gate compares two models on the same items, so it needs each item's outcome rather
than the mean: `item_scores` gives 0/1 correctness per multiple-choice item (the same rules as
`lmopt.evaluate.mc.score_items`, whose means these are), `window_nlls` the mean next-token NLL of
each perplexity window (the protocol of `lmopt.evaluate.perplexity`; every window predicts the same
number of tokens, so the mean over windows is the overall NLL). `decode_tokens_per_s` and
`peak_memory_mb` are one measurement each, so the caller can interleave repeats of two models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from lmopt.data.tasks import MCItem
from lmopt.data.text import pydoc_text
from lmopt.evaluate.loglik import loglikelihoods
from lmopt.evaluate.perplexity import token_nll, tokenize_windows
from lmopt.hardware import current_rss_mb, peak_rss_mb, release_free_heap, reset_peak_rss
from lmopt.models.size import weights_bytes


def item_scores(model: Any, tokenizer: Any, items: Sequence[MCItem], *, greedy: bool = False,
                batch_size: int = 8, max_length: int = 2048,
                progress: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """{"acc": [0/1 per item], "acc_norm": [...]} (greedy tasks: acc only, 1 = greedy continuation)."""
    requests = [req for item in items for req in item.requests]
    scores = loglikelihoods(model, tokenizer, requests, batch_size=batch_size, max_length=max_length,
                            progress=progress)
    acc, acc_norm, pos = [], [], 0
    for item in items:
        chunk = scores[pos:pos + len(item.requests)]
        pos += len(item.requests)
        if greedy:
            acc.append(float(chunk[0][1]))
            continue
        lls = [s for s, _ in chunk]
        # acc_norm: log-likelihood per UTF-8 byte of the choice text (as lm-evaluation-harness).
        normed = [s / max(1, len(t.encode("utf-8"))) for s, t in zip(lls, item.norm_texts, strict=True)]
        acc.append(float(max(range(len(lls)), key=lls.__getitem__) == item.gold))
        acc_norm.append(float(max(range(len(normed)), key=normed.__getitem__) == item.gold))
    return {"acc": acc} if greedy else {"acc": acc, "acc_norm": acc_norm}


def window_nlls(model: Any, tokenizer: Any, text: str, *, seq_len: int = 2048, limit: int | None = None,
                batch_size: int = 1, progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Mean next-token NLL (nats) of each window of `text`; perplexity = exp(mean of these)."""
    windows = tokenize_windows(tokenizer, text, seq_len, limit)  # (n_windows, seq_len)
    out: list[float] = []
    for start in range(0, len(windows), batch_size):
        nll = token_nll(model, windows[start:start + batch_size])  # (batch, seq-1)
        out.extend(float(x) for x in nll.mean(dim=1))
        if progress:
            progress(min(start + batch_size, len(windows)), len(windows))
    return out


def _prompt_ids(tokenizer: Any, length: int) -> Any:
    """A (1, length) prompt of real text (Python's docs), the same for every model with this tokenizer."""
    import torch  # lazy: start-up cost (torch takes about a second to import)

    ids = tokenizer(pydoc_text("eval")[:20 * length], add_special_tokens=False)["input_ids"][:length]
    return torch.tensor([ids], dtype=torch.long)


def decode_tokens_per_s(model: Any, tokenizer: Any, *, prompt_len: int = 32, new_tokens: int = 32) -> float:
    """Batch-1 greedy decode speed: (N-1) tokens over the time from the first generated token to the
    last, each step timestamped inside one `generate` call (the prompt's prefill is not counted)."""
    import torch  # lazy: start-up cost (torch takes about a second to import)
    from transformers import LogitsProcessorList  # lazy: start-up cost (several seconds)

    stamps: list[float] = []

    def clock(input_ids: Any, scores: Any) -> Any:  # called once per generated token, after its forward
        stamps.append(time.perf_counter())
        return scores

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt = _prompt_ids(tokenizer, prompt_len).to(model.device)
    with torch.inference_mode():
        model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad,
                       logits_processor=LogitsProcessorList([clock]))
    return (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9)


def weights_mb(model: Any) -> float:
    """Bytes of parameters and buffers (each storage once: tied embeddings count once), in MB."""
    return weights_bytes(model) / 1e6


def peak_memory_mb(model: Any, tokenizer: Any, *, prompt_len: int = 512) -> float:
    """Weights plus the working memory of one forward pass over a `prompt_len`-token prompt, in MB.

    The working memory is the rise of the peak over the level before the pass: CUDA's allocator
    statistics on a GPU, the process's resident high-water mark on Linux CPUs (freed heap returned
    to the OS and the mark reset first, so repeats agree to about 1 MB). Where neither exists, only
    the weights are counted.
    """
    import torch  # lazy: start-up cost (torch takes about a second to import)

    prompt = _prompt_ids(tokenizer, prompt_len).to(model.device)
    working = 0.0
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.inference_mode():
            model(input_ids=prompt)
        torch.cuda.synchronize()
        working = (torch.cuda.max_memory_allocated() - before) / 1e6
    else:
        release_free_heap()
        before = current_rss_mb() if reset_peak_rss() else None
        with torch.inference_mode():
            model(input_ids=prompt)
        if before is not None:
            working = max(0.0, peak_rss_mb() - before) * 2**20 / 1e6
    return weights_mb(model) + working
