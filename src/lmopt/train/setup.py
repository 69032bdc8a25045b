"""The run set-up shared by `finetune` and `distill`: data in, model made trainable, loop, result out.

Both verbs take the same steps around their own loss:
1. `prepare_data`: read, split (by seed) and tokenize the training data (`data.py`, `examples.py`);
2. `prepare_model`: dropout settings, gradient checkpointing when `memory_plan` says the batch would
   not fit the memory budget, then LoRA adapters or every weight trainable;
3. `run_loop`: the shared accelerate loop (`loop.py`) on batches that keep their example indices, with
   the callbacks and the run dir; the best weights are loaded back when `load_best` is on;
4. `merge_adapters`, then `finish`: the run's figures (`summary`) go into the model card, which records
   the step and its parent, and a `TrainResult` comes back.
What differs (the loss; distillation's teacher, logit cache and hidden-state projections) stays in
`finetune.py` and `distill.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmopt.errors import LmoptError
from lmopt.hardware import bounded_heap, peak_rss_mb
from lmopt.models import LoadedModel
from lmopt.train.callbacks import Callback, Callbacks
from lmopt.train.config import TrainConfig
from lmopt.train.data import read_records, split_records
from lmopt.train.examples import build_examples, collate
from lmopt.train.loop import LoopOutcome, train_loop
from lmopt.train.lora import apply_lora, merge_lora
from lmopt.train.optim import apply_dropout


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
    """Tokenized training and validation examples, their kind (text or chat) and their counts."""

    kind: str
    train: list[dict[str, list[int]]]
    val: list[dict[str, list[int]]]
    info: dict[str, Any]


def prepare_data(data: Any, tokenizer: Any, config: TrainConfig, val_data: Any = None) -> PreparedData:
    """Read, split (documents / conversations, by seed) and tokenize the training data."""
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


@dataclass
class MemoryPlan:
    """What `memory_plan` decided for a run, and the estimates (MB) it decided on."""

    chunked_ce: bool
    gradient_checkpointing: bool
    estimate_mb: float
    """Estimated peak of the plain run (no chunking, no checkpointing)."""
    planned_mb: float
    """Estimated peak with the plan."""
    malloc_mmap_threshold_mb: float | None = None
    """For glibc's malloc during the loop (`TrainConfig.malloc_mmap_threshold_mb`); None = untouched."""


def memory_plan(model: Any, config: TrainConfig) -> MemoryPlan:
    """Chunked CE and gradient checkpointing, each on when asked, or when the estimate exceeds the
    budget (chunked CE first: it costs almost nothing; checkpointing costs ~30% more compute).

    Rough fp32 estimate per micro-batch of n = batch x seq tokens, L layers, width d, MLP width f,
    vocabulary V: weights 4P; gradients and AdamW moments 12 x trainable (all P for full, ~1% for
    LoRA); activations kept for backward ~ n L (10 d + 4 f) x 4 bytes (inputs of the 7 projections,
    norms, residuals, the MLP's gate/up/act); logits, log-softmax and their gradient 3 x n V x 4 bytes.
    With checkpointing only the layer inputs (n L d) and one layer's activations stay.
    """
    cfg = getattr(model, "config", None)
    d = getattr(cfg, "hidden_size", 0)
    f = getattr(cfg, "intermediate_size", 4 * d)
    layers = getattr(cfg, "num_hidden_layers", 0)
    vocab = getattr(cfg, "vocab_size", 0)
    n = config.batch_size * config.seq_len
    params = sum(p.numel() for p in model.parameters())
    trainable = params if config.method == "full" else params // 100
    mb = 4 / 2**20
    fixed = (params + 3 * trainable) * mb
    per_layer = n * (10 * d + 4 * f) * mb
    logits, chunk_logits = 3 * n * vocab * mb, 3 * min(n, 1024) * vocab * mb
    estimate = fixed + layers * per_layer + logits
    budget = config.memory_budget_mb
    chunked = config.chunked_ce
    if chunked is None:
        chunked = budget is not None and estimate > budget
    head = chunk_logits if chunked else logits
    checkpointing = config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = budget is not None and fixed + layers * per_layer + head > budget
    acts = (n * layers * d * mb + per_layer) if checkpointing else layers * per_layer
    threshold = config.malloc_mmap_threshold_mb
    if threshold is None:
        threshold = 4.0 if budget is not None and (chunked or checkpointing) else 0.0
    return MemoryPlan(bool(chunked), bool(checkpointing), round(estimate, 1), round(fixed + acts + head, 1),
                      threshold or None)


def enable_checkpointing(model: Any, lora: bool) -> None:
    """HF activation (gradient) checkpointing, non-reentrant: works with frozen inputs, keeps dropout's
    RNG. transformers 5 renamed `gradient_checkpointing_enable` (now a deprecated alias)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise LmoptError(f"gradient_checkpointing: {type(model).__name__} does not support it")
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    if lora:
        # peft + checkpointing: frozen embeddings give the first checkpointed layer an input without
        # grad; make it require one so a reentrant checkpoint (if a model forces it) still reaches the
        # adapters (newer transformers do this inside the call above; doing it twice is harmless)
        model.enable_input_require_grads()


def prepare_model(model: Any, config: TrainConfig) -> Any:
    """Dropout settings, gradient checkpointing if planned, then LoRA adapters (their own dropout) or
    every weight trainable."""
    if config.dropout is not None:
        apply_dropout(model, config.dropout)
    if memory_plan(model, config).gradient_checkpointing:
        enable_checkpointing(model, config.method == "lora")
    if config.method == "lora":
        # LoRA's A matrices are drawn here, before the loop seeds anything: seed them from the config so
        # the same config gives the same run whatever ran before in this process.
        torch.manual_seed(config.seed)
        return apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def pad_token_id(tokenizer: Any) -> int:
    """The id batches are padded with (0 for tokenizers without a pad token: padding is masked out)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def collate_batch(items: list[tuple[int, dict]], pad_id: int) -> dict[str, Any]:
    """Collate (index, example) pairs: padded tensors plus the example indices (for teacher caches)."""
    batch = collate([ex for _, ex in items], pad_id)
    batch["index"] = torch.tensor([i for i, _ in items], dtype=torch.long)
    return batch


def run_loop(
    model: Any,
    prepared: PreparedData,
    loss_fn: Callable[[Any, dict], Any],
    config: TrainConfig,
    *,
    pad_id: int,
    callbacks: Callback | list[Callback] | None,
    run_dir: str | Path | None,
    label: str,
    plan: MemoryPlan | None = None,
) -> LoopOutcome:
    """Train `model` on `prepared` with `loss_fn` in the shared loop; returns the loop's outcome, whose
    model holds the best weights when `config.load_best` is on and a validation ran. With a `plan`, the
    loop runs under its allocator setting; `outcome.malloc_mmap_threshold_mb` says what was applied."""
    with bounded_heap(plan.malloc_mmap_threshold_mb if plan else None) as threshold:
        outcome = train_loop(
            model,
            prepared.train,
            prepared.val,
            loss_fn,
            config,
            collate=functools.partial(collate_batch, pad_id=pad_id),
            callbacks=Callbacks(callbacks, label=label),
            run_dir=Path(run_dir) if run_dir else None,
            label=label,
        )
    outcome.malloc_mmap_threshold_mb = threshold
    if config.load_best and outcome.best is not None:
        outcome.model.load_state_dict(outcome.best, strict=False)
    return outcome


def merge_adapters(model: Any, config: TrainConfig) -> tuple[Any, Any]:
    """(adapter, model): LoRA adapters merged into a plain model, unless `merge_lora` is off, in which
    case the peft model is both. Without LoRA: (None, model)."""
    if config.method != "lora":
        return None, model
    if not config.merge_lora:
        return model, model
    return None, merge_lora(model)


def finish(
    base: Any,
    model: Any,
    outcome: LoopOutcome,
    prepared: PreparedData,
    config: TrainConfig,
    label: str,
    *,
    adapter: Any = None,
    extra_metrics: dict[str, Any] | None = None,
) -> TrainResult:
    """The `TrainResult` of a run that trained `base` (a `LoadedModel`) into `model`: its card names
    the step (`label`), the parent and the config, and adds the run's figures under `label`."""
    metrics = {**summary(outcome, prepared, config), **(extra_metrics or {})}
    card = base.card.model_copy(
        update={
            "parent": base.ref,
            "step": label,
            "config": config.to_dict(),
            "metrics": {**base.card.metrics, label: metrics},
        }
    )
    loaded = LoadedModel(model, base.tokenizer, base.ref, None, card)
    return TrainResult(loaded, metrics, outcome.state.history, outcome.state.stopped, adapter)


def summary(outcome: LoopOutcome, prepared: PreparedData, config: TrainConfig) -> dict[str, Any]:
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
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "first_eval_loss": history[0]["eval_loss"] if history else None,
        "final_eval_loss": history[-1]["eval_loss"] if history else None,
        "best_eval_loss": state.best_eval_loss,
        "best_step": state.best_step,
        "stopped": state.stopped,
    }
