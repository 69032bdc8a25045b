"""The training loop shared by `finetune` and `distill`, on top of accelerate.

Lifecycle of `train_loop(...)`:
1. an `Accelerator` wraps model, optimizer and data loaders: one process on this machine; DDP or FSDP
   with one process per device under `accelerate launch` / `torchrun`, with no code change;
2. resume: the newest complete checkpoint in the run dir (if any) restores model, optimizer, scheduler,
   RNGs and the loop state (see `checkpoint.py`);
3. per epoch, a data order fixed by (seed, epoch); per optimizer step, `grad_accum` micro-batches
   (no gradient all-reduce until the last), gradient clipping, AdamW, the LR schedule;
4. every `eval_every` steps and at the end: token-weighted validation cross-entropy (plain, no label
   smoothing), the best weights kept, early stopping, user callbacks (which may stop the run);
5. checkpoints every `save_every` steps; stop at max steps / epochs, the time budget, early stopping or
   a callback's request.

`loss_fn(model, batch) -> loss` is the only thing that differs between fine-tuning and distillation.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState

from lmopt.hardware import peak_rss_mb
from lmopt.progress import progress_bar
from lmopt.train.callbacks import Callbacks
from lmopt.train.checkpoint import (
    LoopState,
    config_fingerprint,
    load_best,
    load_checkpoint,
    save_best,
    save_checkpoint,
)
from lmopt.train.losses import ce_sum, chunked_ce_sum, head_input, output_head
from lmopt.train.optim import make_optimizer, make_scheduler


@dataclass
class LoopOutcome:
    state: LoopState
    model: Any
    """The unwrapped trained model (last weights; `best` holds the best ones)."""
    best: dict[str, Any] | None
    """Trainable weights at the best validation loss (CPU tensors), None without validation."""
    trainable: int
    peak_memory_mb: float
    malloc_mmap_threshold_mb: float | None = None
    """The allocator setting the loop ran under (set by `setup.run_loop`), None = glibc's own."""


def training_device() -> Any:
    """The device of this process: its GPU under a multi-GPU launch, else cuda:0 or the CPU.

    `cpu=True` without a GPU is what lets accelerate see a `torchrun`/`accelerate launch` of several
    CPU processes (DDP over gloo); a single process is unaffected.
    """
    return PartialState(cpu=not torch.cuda.is_available()).device


def autocast(config: Any, device: Any) -> Any:
    if config.mixed_precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def epoch_loader(
    accelerator: Any, examples: list[Any], config: Any, epoch: int, collate: Callable, shuffle: bool = True
) -> Any:
    """A prepared DataLoader whose order depends only on (seed, epoch), not on the global RNG."""
    gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    order = torch.randperm(len(examples), generator=gen).tolist() if shuffle else range(len(examples))
    items = [(i, examples[i]) for i in order]
    loader = torch.utils.data.DataLoader(
        items, batch_size=config.batch_size, shuffle=False, collate_fn=collate, generator=gen
    )
    return accelerator.prepare_data_loader(loader, device_placement=True)


def batch_nll(model: Any, batch: dict[str, Any], config: Any, device: Any) -> tuple[float, int]:
    """Summed next-token NLL and labelled positions of one batch; through the chunked head when the
    model has a plain output Linear, so validation never holds the whole (batch, seq, vocab) logits."""
    head = output_head(model)
    with autocast(config, device):
        if head is None:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return ce_sum(logits, batch["labels"])
        hidden = head_input(model, head, batch)
        return chunked_ce_sum(hidden, head.weight, batch["labels"])


def evaluate_loss(accelerator: Any, model: Any, loader: Any, config: Any, max_batches: int | None) -> dict:
    """Token-weighted mean next-token cross-entropy over `loader` (all processes together)."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            nll, count = batch_nll(model, batch, config, accelerator.device)
            totals += torch.tensor([nll, count], dtype=torch.float64, device=accelerator.device)
    model.train()
    nll, count = accelerator.reduce(totals, reduction="sum").tolist()
    loss = nll / max(count, 1)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50)), "eval_tokens": int(count)}


def trainable_weights(model: Any) -> dict[str, Any]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def total_steps(config: Any, n_batches: int) -> int:
    """Optimizer steps of the whole run."""
    if config.max_steps is not None:
        return config.max_steps
    per_epoch = math.ceil(n_batches / config.grad_accum)
    return max(1, math.ceil(config.epochs * per_epoch))


def peak_memory_mb(device: Any) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


class _Run:
    """One call of `train_loop`: the prepared objects and the bookkeeping around the steps."""

    def __init__(
        self,
        model: Any,
        train: list[Any],
        val: list[Any],
        loss_fn: Callable,
        config: Any,
        collate: Callable,
        extra_params: list[Any],
        callbacks: Callbacks,
        run_dir: Path | None,
        label: str,
    ) -> None:
        torch.manual_seed(config.seed)
        # step_scheduler_with_optimizer=False: our schedule counts optimizer steps of the sharded loader;
        # accelerate would otherwise step it num_processes times per step (ending it early under DDP).
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False)
        self.config, self.loss_fn, self.collate, self.callbacks = config, loss_fn, collate, callbacks
        self.train, self.run_dir, self.label = train, run_dir, label
        self.val_loader = epoch_loader(self.acc, val, config, 0, collate, shuffle=False) if val else None
        n_batches = len(epoch_loader(self.acc, train, config, 0, collate))
        self.total = total_steps(config, n_batches)
        optimizer = make_optimizer(model, config, extra_params)
        scheduler = make_scheduler(optimizer, config, self.total)
        self.model, self.opt, self.sched = self.acc.prepare(model, optimizer, scheduler)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.state = LoopState(fingerprint=config_fingerprint(config))
        self.best: dict[str, Any] | None = None
        self.best_dirty = False
        if run_dir is not None and config.resume:
            restored = load_checkpoint(self.acc, run_dir, self.state.fingerprint)
            if restored is not None:
                self.state, self.best = restored, load_best(run_dir)
                self.state.stopped = None  # a new budget or a longer schedule may continue it

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> LoopState:
        self.model.train()
        self._wall_mark = time.perf_counter()
        if self.state.step >= self.total:
            self.state.stopped = "max_steps"
        with progress_bar(f"{self.label} steps", self.total) as advance:
            advance(self.state.step, self.total)
            if self.config.eval_before and self.state.step == 0 and not self.state.history:
                self._evaluate(final=True)
            while self.state.stopped is None:
                if not self._epoch(advance):
                    self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        if not self.state.history or self.state.history[-1]["step"] != self.state.step:
            self._evaluate(final=True)
        return self.state

    def _epoch(self, advance: Callable) -> bool:
        """Consume the rest of the current epoch; True when the run stopped inside it."""
        config, state = self.config, self.state
        loader = epoch_loader(self.acc, self.train, config, state.epoch, self.collate)
        n_batches = len(loader)
        if state.batch_in_epoch:
            loader = self.acc.skip_first_batches(loader, state.batch_in_epoch)
        started, micro = time.perf_counter(), 0
        for batch in loader:
            micro += 1
            state.batch_in_epoch += 1
            sync = micro % config.grad_accum == 0 or state.batch_in_epoch == n_batches
            with contextlib.nullcontext() if sync else self.acc.no_sync(self.model):
                with autocast(config, self.acc.device):
                    loss = self.loss_fn(self.model, batch)
                self.acc.backward(loss / config.grad_accum)
            state.tokens += int(self.acc.reduce(batch["attention_mask"].sum(), reduction="sum"))
            self._last_loss = float(loss.detach())
            if not sync:
                continue
            self._optimizer_step()
            state.train_seconds += time.perf_counter() - started
            advance(1)
            self._after_step()
            started = time.perf_counter()
            if state.stopped:
                return True
        return False

    def _optimizer_step(self) -> None:
        if self.config.max_grad_norm is not None:
            self.acc.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.state.step += 1

    def _after_step(self) -> None:
        config, state = self.config, self.state
        self._tick_wall()
        if state.step % config.log_every == 0:
            line = {"loss": self._last_loss, "lr": self.sched.get_last_lr()[0],
                    "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
                    "train_seconds": state.train_seconds}
            if self.callbacks.log(state.step, line):
                state.stopped = "callback"
        if config.eval_every and state.step % config.eval_every == 0:
            self._evaluate()
        if state.stopped is None and state.step >= self.total:
            state.stopped = "max_steps"
        if state.stopped is None and config.max_minutes and state.wall_seconds >= config.max_minutes * 60:
            state.stopped = "time_budget"
        if self.run_dir is not None and config.save_every and state.step % config.save_every == 0:
            self._checkpoint()

    def _tick_wall(self) -> None:
        now = time.perf_counter()
        self.state.wall_seconds += now - getattr(self, "_wall_mark", now)
        self._wall_mark = now

    def _evaluate(self, final: bool = False) -> None:
        if self.val_loader is None:
            return
        config, state = self.config, self.state
        metrics = evaluate_loss(self.acc, self.model, self.val_loader, config, config.max_val_batches)
        metrics.update(
            step=state.step,
            epoch=state.epoch,
            tokens=state.tokens,
            train_loss=getattr(self, "_last_loss", None),
        )
        state.history.append(metrics)
        improved = (
            state.best_eval_loss is None
            or metrics["eval_loss"] < state.best_eval_loss - config.early_stopping_min_delta
        )
        if improved:
            state.best_eval_loss, state.best_step, state.bad_evals = metrics["eval_loss"], state.step, 0
            self.best, self.best_dirty = trainable_weights(self.acc.unwrap_model(self.model)), True
        else:
            state.bad_evals += 1
        if config.early_stopping_patience and state.bad_evals >= config.early_stopping_patience:
            state.stopped = state.stopped or "early_stopping"
        if self.callbacks.eval(state.step, dict(metrics)) and not final:
            state.stopped = state.stopped or "callback"
        self._tick_wall()

    def _checkpoint(self) -> None:
        assert self.run_dir is not None
        self._tick_wall()
        if self.best_dirty and self.best is not None and self.acc.is_main_process:
            save_best(self.run_dir, self.best)
            self.best_dirty = False
        save_checkpoint(self.acc, self.run_dir, self.state, self.config.keep_checkpoints)
        self._tick_wall()


def train_loop(
    model: Any,
    train: list[Any],
    val: list[Any],
    loss_fn: Callable[[Any, dict], Any],
    config: Any,
    *,
    collate: Callable,
    extra_params: list[Any] | None = None,
    callbacks: Callbacks | None = None,
    run_dir: Path | None = None,
    label: str = "train",
) -> LoopOutcome:
    """Train `model` on `train` examples with `loss_fn` (see the module docstring)."""
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(
        model,
        train,
        val,
        loss_fn,
        config,
        collate,
        list(extra_params or []),
        callbacks or Callbacks(),
        run_dir,
        label,
    )
    state = run.run()
    if run.run_dir is not None and run.best_dirty and run.best is not None and run.acc.is_main_process:
        save_best(run.run_dir, run.best)
    trainable = sum(p.numel() for p in run.params)
    unwrapped = run.acc.unwrap_model(run.model)
    unwrapped.eval()
    return LoopOutcome(state, unwrapped, run.best, trainable, peak_memory_mb(run.acc.device))
