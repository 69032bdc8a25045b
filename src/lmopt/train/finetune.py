"""`finetune(model, data, TrainConfig(...))`: full or LoRA fine-tuning on raw text or chat data.

Raw text is continued pre-training (domain adaptation): documents packed into blocks, every token
learned. Chat data is instruction tuning: the model's chat template, loss on the responses only.
The run is the shared accelerate loop (`loop.py`), so it also runs under `accelerate launch` or
`torchrun` (DDP/FSDP) unchanged. The model is trained in place; the returned `TrainResult.model`
holds the best weights by validation loss, LoRA adapters merged (a plain transformers model).
The set-up around the loss (data, trainable model, loop wiring, result) is shared with `distill`
in `setup.py`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from lmopt.train.callbacks import Callback
from lmopt.train.config import TrainConfig
from lmopt.train.losses import chunked_ce, head_input, masked_ce, output_head
from lmopt.train.setup import (
    PreparedData,
    TrainResult,
    collate_batch,
    finish,
    memory_plan,
    merge_adapters,
    pad_token_id,
    prepare_data,
    prepare_model,
    run_loop,
    summary,
)

# The shared pieces moved to setup.py stay importable from here, where recipes and tests import them.
__all__ = [
    "PreparedData",
    "TrainResult",
    "collate_batch",
    "finetune",
    "lm_loss",
    "prepare_data",
    "prepare_model",
    "summary",
]


def lm_loss(model: Any, batch: dict[str, Any], label_smoothing: float = 0.0, chunked: bool = False) -> Any:
    """The fine-tuning loss: masked next-token cross-entropy (label-smoothed if asked); `chunked`:
    fused with the output head, never holding the whole (batch, seq, vocab) logits."""
    head = output_head(model) if chunked else None
    if head is not None:
        hidden = head_input(model, head, batch)
        return chunked_ce(hidden, head.weight, batch["labels"], label_smoothing=label_smoothing)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return masked_ce(logits, batch["labels"], label_smoothing)


def finetune(
    model: Any,
    data: Any,
    config: TrainConfig | None = None,
    *,
    callbacks: Callback | list[Callback] | None = None,
    val_data: Any = None,
    run_dir: str | Path | None = None,
) -> TrainResult:
    """Fine-tune `model` (a `LoadedModel`) on `data` (a path or a list; see `lmopt.train.data`).

    `callbacks` see every validation (`on_eval(step, metrics) -> bool`, True stops the run; see
    `lmopt.train.callbacks`). `val_data` replaces the `val_fraction` split. `run_dir` enables
    checkpoints (`save_every`) and resumption: calling again with the same run dir continues there.
    """
    config = config or TrainConfig()
    prepared = prepare_data(data, model.tokenizer, config, val_data)
    plan = memory_plan(model.model, config)
    trainable = prepare_model(model.model, config)
    loss_fn = functools.partial(lm_loss, label_smoothing=config.label_smoothing, chunked=plan.chunked_ce)
    outcome = run_loop(
        trainable,
        prepared,
        loss_fn,
        config,
        pad_id=pad_token_id(model.tokenizer),
        callbacks=callbacks,
        run_dir=run_dir,
        label="finetune",
        plan=plan,
    )
    adapter, trained = merge_adapters(outcome.model, config)
    extra = {"chunked_ce": plan.chunked_ce, "gradient_checkpointing": plan.gradient_checkpointing,
             "memory_estimate_mb": plan.estimate_mb, "memory_planned_mb": plan.planned_mb,
             "malloc_mmap_threshold_mb": outcome.malloc_mmap_threshold_mb}
    return finish(model, trained, outcome, prepared, config, "finetune", adapter=adapter, extra_metrics=extra)
