"""A seconds-long stand-in for a training step: an MLP fit to a noisy 1-D function.

It has the same shape as `lmopt.train.finetune` from the tuner's point of view (a typed config with
nested fields, a validation loss reported to an `on_eval(step, metrics) -> bool` hook that may stop
training, a model to save), so the study machinery (pruning, resume, workers, Pareto sets) is tested
in milliseconds per trial. Users can reuse it to try a search space or a pruner.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from lmopt.configs import Config


class ToyOptim(Config):
    lr: float = Field(default=1e-2, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)


class ToyConfig(Config):
    """An MLP regression trained with AdamW; every field is a tuning knob or a test knob."""

    optim: ToyOptim = Field(default_factory=ToyOptim)
    hidden: int = Field(default=16, ge=1)
    """Hidden width (the model's size, a cost objective in multi-objective tests)."""
    steps: int = Field(default=60, ge=1)
    batch_size: int = Field(default=32, ge=1)
    eval_every: int = Field(default=10, ge=1)
    seed: int = 0
    delay: float = Field(default=0.0, ge=0)
    """Seconds slept per evaluation (lets tests overlap two worker processes)."""


def _data(seed: int) -> tuple[Any, Any, Any, Any]:
    gen = torch.Generator().manual_seed(1234 + seed)
    x = torch.rand(512, 1, generator=gen) * 4 - 2  # (512, 1)
    y = torch.sin(3 * x) + 0.1 * torch.randn(x.shape, generator=gen)
    return x[:384], y[:384], x[384:], y[384:]


def toy_regression(config: ToyConfig, on_eval: Callable[[int, dict[str, float]], bool] | None = None
                   ) -> tuple[Any, dict[str, float]]:
    """Train; call `on_eval(step, {"eval_loss": mse})` every `eval_every` steps (True = stop).

    Returns (model, metrics) with `eval_loss` (last validation MSE), `params` and `steps`.
    """
    torch.manual_seed(config.seed)
    x, y, vx, vy = _data(config.seed)
    model = torch.nn.Sequential(torch.nn.Linear(1, config.hidden), torch.nn.Tanh(),
                                torch.nn.Linear(config.hidden, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    eval_loss, step = math.inf, 0
    for step in range(1, config.steps + 1):
        idx = torch.randint(0, len(x), (config.batch_size,), generator=gen)
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % config.eval_every == 0 or step == config.steps:
            with torch.no_grad():
                eval_loss = float(torch.nn.functional.mse_loss(model(vx), vy))
            time.sleep(config.delay)
            if on_eval is not None and on_eval(step, {"eval_loss": eval_loss}):
                break
    params = sum(p.numel() for p in model.parameters())
    return model, {"eval_loss": eval_loss, "params": float(params), "steps": float(step)}


def save_toy(model: Any, config: ToyConfig, directory: Path, card: dict[str, Any]) -> None:
    """Write the toy model's weights, config and card into `directory` (which the caller made)."""
    torch.save(model.state_dict(), directory / "toy.pt")
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    (directory / "lmopt.json").write_text(json.dumps(card, indent=2))
