"""`finetune(model, data, TrainConfig(...))`: full or LoRA fine-tuning on raw text or chat data.

Raw text is continued pre-training (domain adaptation): documents packed into blocks, every token
learned. Chat data is instruction tuning: the model's chat template, loss on the responses only.
The run is the shared accelerate loop (`loop.py`), so it also runs under `accelerate launch` or
`torchrun` (DDP/FSDP) unchanged. The model is trained in place; the returned `TrainResult.model`
holds the best weights by validation loss, LoRA adapters merged (a plain transformers model).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.train.callbacks import Callback, Callbacks
from lmopt.train.config import TrainConfig


@dataclass
class TrainResult:
    """What a training run produced: the trained model and its figures."""

    model: Any
    """A `LoadedModel` with the trained (best, merged) weights and the input's tokenizer."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Summary: steps, tokens, tokens/s, losses, best step, peak memory, stop reason..."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every validation evaluation, in order."""
    stopped: str | None = None
    """Why the run ended: max_steps, time_budget, early_stopping or callback."""
    adapter: Any = None
    """The unmerged peft model, when LoRA ran with merge_lora false."""


@dataclass
class PreparedData:
    kind: str
    train: list[dict[str, list[int]]]
    val: list[dict[str, list[int]]]
    info: dict[str, Any]


def prepare_data(data: Any, tokenizer: Any, config: TrainConfig, val_data: Any = None) -> PreparedData:
    """Read, split (documents / conversations, by seed) and tokenize the training data."""
    from lmopt.train.data import read_records, split_records
    from lmopt.train.examples import build_examples

    kind, records = read_records(data, config.format)
    if val_data is not None:
        train_records, (_, val_records) = records, read_records(val_data, kind)
    else:
        train_records, val_records = split_records(records, config.val_fraction, config.seed)
    build = functools.partial(
        build_examples, kind, tokenizer=tokenizer, seq_len=config.seq_len, response_only=config.response_only
    )
    train, val = build(records=train_records), build(records=val_records) if val_records else []
    if not train:
        raise LmoptError(
            "data: no training example left (texts too short, or every response truncated "
            "away: raise seq_len)"
        )
    info = {
        "kind": kind,
        "train_records": len(train_records),
        "val_records": len(val_records),
        "train_examples": len(train),
        "val_examples": len(val),
        "train_label_tokens": sum(sum(t != -100 for t in ex["labels"][1:]) for ex in train),
    }
    return PreparedData(kind, train, val, info)


def lm_loss(model: Any, batch: dict[str, Any], label_smoothing: float = 0.0) -> Any:
    """The fine-tuning loss: masked next-token cross-entropy (label-smoothed if asked)."""
    from lmopt.train.losses import masked_ce

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return masked_ce(logits, batch["labels"], label_smoothing)


def prepare_model(model: Any, config: TrainConfig) -> Any:
    """Dropout settings, then LoRA adapters (their own dropout) or every weight trainable."""
    from lmopt.train.lora import apply_lora
    from lmopt.train.optim import apply_dropout

    if config.dropout is not None:
        apply_dropout(model, config.dropout)
    if config.method == "lora":
        import torch

        # LoRA's A matrices are drawn here, before the loop seeds anything: seed them from the config so
        # the same config gives the same run whatever ran before in this process.
        torch.manual_seed(config.seed)
        return apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


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
    from lmopt.models import LoadedModel
    from lmopt.train.loop import train_loop

    config = config or TrainConfig()
    prepared = prepare_data(data, model.tokenizer, config, val_data)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    trainable = prepare_model(model.model, config)
    loss_fn = functools.partial(lm_loss, label_smoothing=config.label_smoothing)
    outcome = train_loop(
        trainable,
        prepared.train,
        prepared.val,
        loss_fn,
        config,
        collate=functools.partial(collate_batch, pad_id=pad_id),
        callbacks=Callbacks(callbacks, label="finetune"),
        run_dir=Path(run_dir) if run_dir else None,
        label="finetune",
    )
    trained = outcome.model
    if config.load_best and outcome.best is not None:
        trained.load_state_dict(outcome.best, strict=False)
    adapter = None
    if config.method == "lora":
        from lmopt.train.lora import merge_lora

        adapter, trained = (None, merge_lora(trained)) if config.merge_lora else (trained, trained)
    metrics = summary(outcome, prepared, config)
    card = model.card.model_copy(
        update={
            "parent": model.ref,
            "step": "finetune",
            "config": config.to_dict(),
            "metrics": {**model.card.metrics, "finetune": metrics},
        }
    )
    result_model = LoadedModel(trained, model.tokenizer, model.ref, None, card)
    return TrainResult(result_model, metrics, outcome.state.history, outcome.state.stopped, adapter)


def collate_batch(items: list[tuple[int, dict]], pad_id: int) -> dict[str, Any]:
    """Collate (index, example) pairs: padded tensors plus the example indices (for teacher caches)."""
    import torch

    from lmopt.train.examples import collate

    batch = collate([ex for _, ex in items], pad_id)
    batch["index"] = torch.tensor([i for i, _ in items], dtype=torch.long)
    return batch


def summary(outcome: Any, prepared: PreparedData, config: TrainConfig) -> dict[str, Any]:
    """The figures of a finished run (what the card, the registry and the CLI report)."""
    state = outcome.state
    history = state.history
    return {
        **prepared.info,
        "method": config.method,
        "steps": state.step,
        "epochs_done": state.epoch,
        "tokens": state.tokens,
        "train_seconds": round(state.train_seconds, 2),
        "wall_seconds": round(state.wall_seconds, 2),
        "tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 2),
        "trainable_parameters": outcome.trainable,
        "peak_memory_mb": round(outcome.peak_memory_mb, 1),
        "first_eval_loss": history[0]["eval_loss"] if history else None,
        "final_eval_loss": history[-1]["eval_loss"] if history else None,
        "best_eval_loss": state.best_eval_loss,
        "best_step": state.best_step,
        "stopped": state.stopped,
    }
