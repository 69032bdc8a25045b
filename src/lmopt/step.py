"""The step protocol: what a step is, what it sees, what it returns, and the one table of steps.

Every technique is a step: a verb, a typed config and `run(ctx, config) -> StepResult`, declared next
to its code as a `Step` object (`QUANTIZE = Step("quantize", QuantizeStepConfig, quantize_step)`).
`STEP_TABLE` below is the one place that names them all; a step's module is imported only when a
recipe or a command uses it, and importing it only declares things. This module imports no stage, so
every stage can depend on it; the recipe runner (`lmopt.pipeline`) sits on top.

How to add a step: write the config (a `lmopt.configs.Config`, or `method_union(...)` of method
configs) and `run` beside the method's code, declare the `Step`, add its line to `STEP_TABLE`, ship a
recipe in `lmopt/recipes/` and a test that runs it on a tiny model; its CLI verb is generated
(`lmopt.cli.steps`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lmopt.configs import parse_config
from lmopt.errors import LmoptError

STEP_TABLE: dict[str, str] = {
    "evaluate": "lmopt.evaluate.step:EVALUATE",
    "bench": "lmopt.evaluate.step:BENCH",
    "clean": "lmopt.data.step:CLEAN",
    "augment": "lmopt.data.step:AUGMENT",
    "finetune": "lmopt.train.step:FINETUNE",
    "distill": "lmopt.train.step:DISTILL",
    "tune": "lmopt.tune.step:TUNE",
    "quantize": "lmopt.compress.quantize.step:QUANTIZE",
    "rotate": "lmopt.compress.quantize.rotate_step:ROTATE",
    "prune": "lmopt.compress.prune.step:PRUNE",
    "serve-bench": "lmopt.serve.step:SERVE_BENCH",
    "export": "lmopt.export.step:EXPORT",
    "optimize": "lmopt.select.optimize_step:OPTIMIZE",
}
"""Step name -> `module:attribute` of its `Step` declaration."""


@dataclass
class StepContext:
    """What a step sees: the current model/dataset, where to write, and how to resolve paths."""

    model: Path | str | None
    """Current model reference (artifact dir, alias or hub id); None for data-only recipes."""
    data: Path | None
    """Current dataset file (jsonl), when the recipe has one."""
    output: Path
    """A fresh directory this step owns; write the new artifact under it (atomically)."""
    data_dir: Path | None = None
    """Evaluation data dir (shared/data), when there is one."""
    base_dir: Path = field(default_factory=Path.cwd)
    """Relative paths in configs resolve against this (the recipe's folder)."""
    dtype: str = "auto"
    log: Callable[[str], Any] = field(default=lambda _line: None, repr=False)
    """Where a long step reports progress lines (the recipe runner's log; silent by default)."""

    def resolve_path(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    def require_model(self) -> Path | str:
        """The current model reference; a clear error for a recipe that names none."""
        if self.model is None:
            raise LmoptError("this step needs a model, but the recipe names none")
        return self.model


@dataclass
class StepResult:
    """A new model and/or dataset (None = unchanged) and the figures the step measured."""

    model: Path | None = None
    data: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    model_hash: str | None = None
    """Content hash of the model the step measured or started from (for the registry)."""


@dataclass(frozen=True)
class Step:
    """A verb, its config type (a Config class or a `method_union`) and the function that runs it."""

    name: str
    config: Any
    run: Callable[[StepContext, Any], StepResult]
    cache: bool = True
    """Reuse a finished output with the same inputs and config. Off for speed measurements, which a
    user reruns to measure again."""
    per_task: bool = False
    """The metrics are `{task: figures}`: the registry gets one row per task."""

    @property
    def summary(self) -> str:
        doc = (self.run.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""

    def parse(self, data: dict[str, Any] | None, where: str) -> Any:
        return parse_config(self.config, data, where)


def get_step(name: str) -> Step:
    """Look up a step by name, importing its module on first use."""
    if name not in STEP_TABLE:
        raise LmoptError(f"unknown step '{name}' (available: {', '.join(sorted(STEP_TABLE))})")
    module, _, attribute = STEP_TABLE[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def available_steps() -> list[str]:
    return sorted(STEP_TABLE)


# --- where results go ------------------------------------------------------------------------------


class RunRecorder(Protocol):
    """Where measured figures go: `lmopt.monitor.Registry` (SQL) or `NullRecorder`."""

    def record(self, kind: str, model: str | None, metrics: dict[str, Any], *, task: str | None = None,
               model_hash: str | None = None, config: dict[str, Any] | None = None) -> int: ...

    def register_model(self, path: str | Path, figures: dict[str, Any] | None = None) -> str:
        """Remember a model a step saved (content hash, lineage from its card, figures)."""
        ...


class NullRecorder:
    """Records nothing: the default for library use and tests that should not write anywhere."""

    url = "null"

    def record(self, kind: str, model: str | None, metrics: dict[str, Any], **fields: Any) -> int:
        return 0

    def register_model(self, path: str | Path, figures: dict[str, Any] | None = None) -> str:
        return ""

    def query(self, **filters: Any) -> list[dict[str, Any]]:
        return []
