"""The output head of a causal LM, and its input: so that losses over a 49k-word vocabulary can be
computed a block of positions at a time instead of from the whole (batch, seq, vocab) logits.

Used by training (the chunked cross-entropy) and by evaluation (perplexity): a batch of 8 windows of
2,048 tokens through SmolLM2's 49,152-word head is 3.2 GB of float32 logits, and the float32
log-softmax of them as much again.
"""

from __future__ import annotations

from typing import Any

import torch

POST_HEAD_SCALES = ("logit_scale", "logits_scaling", "lm_head_multiplier")
"""Config fields of families whose forward rescales the head's output (Cohere, Granite, Falcon-H1):
`head_logits` does not reproduce them, so such models are given no head and callers use `.logits`."""


def output_head(model: Any) -> Any:
    """The output projection module of a (possibly DDP- or peft-wrapped) causal LM, or None (none
    found, or a model whose logits are rescaled after the head, see `POST_HEAD_SCALES`)."""
    inner = getattr(model, "module", model)  # DDP / accelerate wrappers
    config = getattr(inner, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in POST_HEAD_SCALES):
        return None
    return inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None


def head_input(model: Any, head: Any, **inputs: Any) -> torch.Tensor:
    """Run the whole model (its wrappers' hooks included) but give the head zero positions: a
    pre-hook takes the head's input, the final hidden states (batch, seq, d), and passes on an empty
    slice, so no logits are computed."""
    captured: list[torch.Tensor] = []

    def take(_module: Any, args: tuple) -> tuple:
        captured.append(args[0])
        return (args[0][:, :0],)

    handle = head.register_forward_pre_hook(take)
    try:
        model(**inputs)
    finally:
        handle.remove()
    return captured[0]


def logit_softcap(model: Any) -> float | None:
    """The final logit soft-cap of a (possibly wrapped) model's config (Gemma 2: 30.0), or None."""
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "final_logit_softcapping", None)


def head_logits(model: Any, head: Any, hidden: torch.Tensor) -> torch.Tensor:
    """What the model's forward makes of the head's output: the head, then the final logit
    soft-capping of models that have one (cap * tanh(logits / cap))."""
    logits = head(hidden)
    cap = logit_softcap(model)
    return torch.tanh(logits / cap) * cap if cap else logits


LOGIT_ROWS = 1024
"""Positions whose logits exist at once: 1,024 x 49,152 words is 200 MB in float32."""


def rows_nll(hidden: torch.Tensor, targets: torch.Tensor, head_fn: Any, rows: int | None = None) -> torch.Tensor:
    """Next-token NLL (nats, float64) of each row: cross-entropy of `head_fn(hidden rows)` against
    `targets`, `rows` positions at a time. hidden (n, d) (or (n, vocab) with an identity `head_fn`),
    targets (n,): the result is (n,). The log-softmax runs in float32: bf16 logits lose precision in
    the normalizer. No gradient is kept. `rows` defaults to LOGIT_ROWS."""
    rows = rows or LOGIT_ROWS
    parts = []
    with torch.no_grad():
        for start in range(0, targets.numel(), rows):
            logits = head_fn(hidden[start:start + rows]).float()  # (rows, vocab)
            parts.append(torch.nn.functional.cross_entropy(
                logits, targets[start:start + rows].to(logits.device), reduction="none").double().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
