"""The regression suite file: what a gate measures on both models and how much worse is allowed.

A suite is YAML, validated here (unknown keys rejected, every field documented):

    name: quick
    tasks:            # multiple-choice accuracy, paired per item
      - {task: arc_easy, limit: 200, max_drop: 0.03}
    perplexity:       # per-window NLL, paired per window
      - {source: pydoc, windows: 16, seq_len: 512, max_increase: 0.05}
    speed: {repeats: 5, new_tokens: 32, min_ratio: 0.8}
    memory: {max_ratio: 1.1}

Each gate fails only when the whole confidence interval of the difference lies beyond its tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from lmopt.configs import Config, read_yaml_map
from lmopt.errors import LmoptError
from lmopt.evaluate import check_task, is_perplexity_task

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
QUICK_SUITE = RECIPES_DIR / "suite-quick.yaml"


class TaskGate(Config):
    """Multiple-choice accuracy on the first `limit` items of a task."""

    task: str
    """piqa, arc_easy, arc_challenge, boolq, winogrande, openbookqa, copa, lambada, or mc:PATH."""
    limit: int | None = Field(default=200, ge=1)
    """First N items (None: all)."""
    metric: Literal["acc", "acc_norm"] = "acc"
    """Which accuracy to gate on (lambada has acc only)."""
    max_drop: float = Field(default=0.03, ge=0)
    """Largest allowed accuracy drop, absolute (0.03 = 3 points)."""


class PerplexityGate(Config):
    """Perplexity on the first `windows` windows of a text."""

    source: str
    """pydoc, wikitext2, or a .txt/.jsonl file (relative paths: from the suite file's folder)."""
    windows: int = Field(default=16, ge=2)
    """Number of windows (the units the interval resamples)."""
    seq_len: int = Field(default=512, ge=2)
    """Window length in tokens."""
    max_increase: float = Field(default=0.05, ge=0)
    """Largest allowed relative perplexity increase (0.05 = candidate at most 5% higher)."""


class SpeedGate(Config):
    """Batch-1 greedy decode speed, both models measured in alternating repeats."""

    prompt_len: int = Field(default=32, ge=1)
    """Prompt tokens before decoding."""
    new_tokens: int = Field(default=32, ge=2)
    """Tokens decoded per measurement."""
    repeats: int = Field(default=5, ge=2)
    """Measurements per model (the units the interval resamples)."""
    min_ratio: float = Field(default=0.8, gt=0)
    """Smallest allowed candidate/baseline decode tokens/s."""


class MemoryGate(Config):
    """Peak memory: weights plus the working memory of one forward pass over a prompt."""

    prompt_len: int = Field(default=256, ge=1)
    """Prompt tokens of the measured forward pass."""
    repeats: int = Field(default=3, ge=2)
    """Measurements per model."""
    max_ratio: float | None = Field(default=1.1, gt=0)
    """Largest allowed candidate/baseline peak memory (None: no relative gate)."""
    max_mb: float | None = Field(default=None, gt=0)
    """Largest allowed candidate peak memory in MB (None: no absolute gate)."""


class Suite(Config):
    """A regression suite: metrics measured on both models, with a gate each."""

    name: str = "suite"
    """Name stored with every result (trends are drawn per suite and metric)."""
    description: str = ""
    tasks: list[TaskGate] = Field(default_factory=list)
    perplexity: list[PerplexityGate] = Field(default_factory=list)
    speed: SpeedGate | None = None
    memory: MemoryGate | None = None
    confidence: float = Field(default=0.95, gt=0, lt=1)
    """Confidence level of every interval."""
    resamples: int = Field(default=2000, ge=100)
    """Bootstrap resamples per interval."""
    seed: int = 0
    """Seed of the bootstrap (results are reproducible)."""
    dtype: str = "auto"
    """dtype both models are loaded in (auto, float32, bfloat16)."""
    batch_size: int = Field(default=8, ge=1)
    """Sequences per forward pass for accuracy items."""

    @model_validator(mode="after")
    def _not_empty(self) -> Suite:
        if not (self.tasks or self.perplexity or self.speed or self.memory):
            raise ValueError("a suite needs at least one of tasks, perplexity, speed, memory")
        return self


def check_suite(suite: Suite) -> None:
    """Fail fast, before any model is loaded, on a task or text source that cannot run."""
    for gate in suite.tasks:
        check_task(gate.task)
        if is_perplexity_task(gate.task):
            raise LmoptError(f"suite '{suite.name}': tasks: '{gate.task}' is a perplexity source; "
                             "list it under perplexity")
        if gate.task == "lambada" and gate.metric == "acc_norm":
            raise LmoptError(f"suite '{suite.name}': tasks: lambada has no acc_norm (use metric: acc)")
    for gate in suite.perplexity:
        check_task(gate.source)
        if not is_perplexity_task(gate.source):
            raise LmoptError(f"suite '{suite.name}': perplexity: '{gate.source}' is a multiple-choice "
                             "task; list it under tasks")


def read_suite_map(path: Path) -> dict:
    """The suite file's map; a YAML syntax error is one line naming the file, line and column."""
    try:
        return read_yaml_map(path)
    except LmoptError:
        if not path.is_file():
            raise
        try:
            yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise LmoptError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
        raise


def load_suite(path: str | Path | None = None) -> Suite:
    """Read and validate a suite file (None or "quick": the bundled quick suite)."""
    path = QUICK_SUITE if path is None or str(path) == "quick" else Path(path).expanduser()
    suite = Suite.parse(read_suite_map(path), where=str(path))
    base = path.parent

    def local(name: str, prefix: str = "") -> str:
        rel = name[len(prefix):]
        if not name.startswith(prefix) or Path(rel).is_absolute() or not (base / rel).exists():
            return name
        return prefix + str(base / rel)

    for gate in suite.tasks:
        gate.task = local(gate.task, "mc:")
    for gate in suite.perplexity:
        gate.source = local(gate.source)
    check_suite(suite)
    return suite
