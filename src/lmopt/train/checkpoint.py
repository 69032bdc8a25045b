"""Checkpoints of a training run: everything needed to continue as if it had never stopped.

Layout of a run dir:

    run_dir/
      ckpt-0000040/            # one per `save_every` steps, the newest `keep_checkpoints` kept
        (accelerate state)     # model, optimizer, LR scheduler, every RNG, per process
        loop_state.json        # step, epoch, micro-batches consumed, best loss, history, timings
      best.safetensors         # trainable weights at the best validation loss so far

Each checkpoint is written under a temporary name and renamed when complete, so a run killed at any
moment (even while saving) resumes from the newest complete checkpoint. The data order is a pure
function of (seed, epoch) and the consumed micro-batches are skipped on resume, so the resumed run
sees exactly the batches, learning rates and random numbers the uninterrupted one would have.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from lmopt.errors import LmoptError
from lmopt.io import atomic_path, move_into_place

STATE_FILE = "loop_state.json"
BEST_FILE = "best.safetensors"
# Settings that may change between a run and its resumption without changing what it computes.
RESUME_FREE_FIELDS = (
    "max_minutes",
    "log_every",
    "resume",
    "keep_checkpoints",
    "save_every",
    "max_steps",
    "epochs",
    "early_stopping_patience",
)


@dataclass
class LoopState:
    """Where a training run stands; saved with each checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed."""
    tokens: int = 0
    train_seconds: float = 0.0
    """Time in forward/backward/optimizer (throughput), summed over resumptions."""
    wall_seconds: float = 0.0
    """Whole-loop time incl. evaluation and checkpoints (the `max_minutes` budget), summed too."""
    best_eval_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None
    fingerprint: str = ""


def config_fingerprint(config: Any) -> str:
    """The config hash that must match for a checkpoint to be resumed."""
    free = {k: None for k in RESUME_FREE_FIELDS if k in type(config).model_fields}
    return config.model_copy(update=free).fingerprint()


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob("ckpt-*") if (p / STATE_FILE).exists() and ".tmp" not in p.name)


def save_checkpoint(accelerator: Any, run_dir: Path, state: LoopState, keep: int) -> Path:
    """Write checkpoint `ckpt-<step>` atomically and prune the older ones beyond `keep`."""
    final = run_dir / f"ckpt-{state.step:07d}"
    tmp = run_dir / f"{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        move_into_place(tmp, final)  # every process wrote its part into tmp, so no atomic_directory
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, run_dir: Path, fingerprint: str) -> LoopState | None:
    """Restore the newest checkpoint into the prepared objects; None when there is none."""
    found = checkpoints(run_dir)
    if not found:
        return None
    state = LoopState(**json.loads((found[-1] / STATE_FILE).read_text()))
    if state.fingerprint != fingerprint:
        raise LmoptError(
            f"{run_dir}: its checkpoints come from a different training config; "
            f"use another run dir or set resume: false"
        )
    accelerator.load_state(str(found[-1]))
    return state


def save_best(run_dir: Path, weights: dict[str, Any]) -> None:
    """Write the best trainable weights atomically."""
    with atomic_path(run_dir / BEST_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))


def load_best(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / BEST_FILE
    return load_file(str(path)) if path.exists() else None
