"""The step registry: every technique is a verb plus a typed config, registered next to its code.

A step turns the current model and/or dataset of a recipe into new ones (or only measures them).
Registration is a decorator in the step's own module; `STEP_MODULES` says which module to import
for a name, so running a recipe imports only the steps it uses.

How to add a step: write `run(ctx, config) -> StepResult` beside the method's code, decorate it
with `@register_step("name", ConfigClass)`, add the name -> module line below, ship a recipe in
`lmopt/recipes/` and a test that runs it on a tiny model.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmopt.configs import Config
from lmopt.errors import LmoptError

STEP_MODULES: dict[str, str] = {
    "evaluate": "lmopt.evaluate.step",
    "bench": "lmopt.evaluate.step",
    "clean": "lmopt.data.step",
    "augment": "lmopt.data.step",
    "finetune": "lmopt.train.step",
    "distill": "lmopt.train.step",
    "tune": "lmopt.tune.step",
    "quantize": "lmopt.compress.quantize.step",
    "prune": "lmopt.compress.prune.step",
    "serve-bench": "lmopt.serve.step",
}


@dataclass
class StepContext:
    """What a step sees: the current model/dataset, where to write, and shared services."""

    model: Path | str | None
    """Current model reference (artifact dir, alias or hub id); None for data-only recipes."""
    data: Path | None
    """Current dataset file (jsonl), when the recipe has one."""
    output: Path
    """A fresh directory this step owns; write the new artifact under it (atomically)."""
    data_dir: Path | None = None
    """Evaluation data dir (shared/data), when there is one."""
    registry: Any = None
    """A `lmopt.monitor.Registry` or None."""
    base_dir: Path = field(default_factory=Path.cwd)
    """Relative paths in configs resolve against this (the recipe's folder)."""
    dtype: str = "auto"

    def resolve_path(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    def load_model(self, dtype: str | None = None) -> Any:
        from lmopt.models import load_model

        if self.model is None:
            raise LmoptError("this step needs a model, but the recipe names none")
        return load_model(self.model, dtype=dtype or self.dtype)


@dataclass
class StepResult:
    """A new model and/or dataset (None = unchanged) and the figures the step measured."""

    model: Path | None = None
    data: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepSpec:
    name: str
    config: type[Config]
    run: Callable[[StepContext, Any], StepResult]
    doc: str = ""

    def parse(self, data: dict[str, Any] | None, where: str) -> Config:
        return self.config.parse(data, where=where)


STEPS: dict[str, StepSpec] = {}


def register_step(name: str, config: type[Config]) -> Callable:
    """Decorator: register `run(ctx, config) -> StepResult` as step `name` with its config class."""

    def wrap(func: Callable[[StepContext, Any], StepResult]) -> Callable:
        doc = (func.__doc__ or "").strip().splitlines()
        STEPS[name] = StepSpec(name, config, func, doc[0] if doc else "")
        return func

    return wrap


def get_step(name: str) -> StepSpec:
    """Look up a step by name, importing its module on first use."""
    if name not in STEPS and name in STEP_MODULES:
        try:
            importlib.import_module(STEP_MODULES[name])
        except ModuleNotFoundError as exc:
            if not exc.name or not exc.name.startswith("lmopt"):
                raise
    if name not in STEPS:
        known = sorted(n for n in STEP_MODULES if _available(n))
        raise LmoptError(f"unknown step '{name}' (available: {', '.join(known)})")
    return STEPS[name]


def _available(name: str) -> bool:
    try:
        return importlib.util.find_spec(STEP_MODULES[name]) is not None
    except ModuleNotFoundError:  # its parent package does not exist yet
        return False


def available_steps() -> list[str]:
    return sorted(n for n in STEP_MODULES if _available(n))
