"""Typed config of `lmopt optimize`: candidate models, objective, constraints, budget, search space, fidelities.

Metrics (what an objective or a constraint can name):
- `TASK:METRIC` measured on the candidate: `wikitext2:perplexity`, `pydoc:perplexity`, `FILE.txt:perplexity`,
  `boolq:acc`, `arc_easy:acc_norm`, `lambada:acc`, `mc:PATH:acc`;
- machine figures measured on this machine: `decode_tok_s` (batch-1 decode tokens/s), `prefill_tok_s`,
  `ttft_ms` (time to first token), `token_ms` (1000 / decode_tok_s), `peak_mb` (peak resident memory of
  a process that loads the candidate and runs it), `size_mb` (weights on disk), `params_m`;
- ratios to the reference model (the first candidate unless `reference` says otherwise):
  `quality_ratio` (objective / the reference's objective, measured in `quality_reference_dtype`),
  `ppl_ratio` (the same, for a perplexity objective), `decode_speedup` (decode_tok_s / the reference's, in
  `speed_reference_dtype`).
Constraints are `METRIC>=NUMBER` or `METRIC<=NUMBER`, several per string separated by commas.
No torch here: validating a config stays instant.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lmopt.configs import Config
from lmopt.data.tasks import GREEDY_TASKS, MC_TASKS

MACHINE_METRICS: dict[str, tuple[str, str]] = {
    "decode_tok_s": ("maximize", "batch-1 decode tokens/s"),
    "prefill_tok_s": ("maximize", "prefill tokens/s"),
    "ttft_ms": ("minimize", "batch-1 time to first token, ms"),
    "token_ms": ("minimize", "batch-1 time per generated token, ms"),
    "peak_mb": ("minimize", "peak resident memory while loading and running the candidate, MB"),
    "size_mb": ("minimize", "weights on disk, MB"),
    "params_m": ("minimize", "parameters, millions"),
    "decode_speedup": ("maximize", "decode_tok_s / the reference's (in speed_reference_dtype)"),
}
RATIO_METRICS = ("quality_ratio", "ppl_ratio")
"""objective / the reference's objective (direction: the objective's)."""
MAXIMIZED_TASK_METRICS = ("acc", "acc_norm")
BOUNDED_01 = ("acc", "acc_norm")


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`, e.g. decode_tok_s >= 40."""

    metric: str
    op: Literal[">=", "<="]
    bound: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"

    def violation(self, value: float) -> float:
        """<= 0 when met; otherwise how far off, relative to the bound (comparable across metrics)."""
        scale = abs(self.bound) or 1.0
        return (self.bound - value) / scale if self.op == ">=" else (value - self.bound) / scale


def task_metric(name: str) -> tuple[str, str] | None:
    """`TASK:METRIC` -> (task, metric); None for a machine or ratio metric."""
    if name in MACHINE_METRICS or name in RATIO_METRICS:
        return None
    task, sep, metric = name.rpartition(":")
    if not sep or not task or not metric:
        raise ValueError(f"unknown metric '{name}' (choose {', '.join([*MACHINE_METRICS, *RATIO_METRICS])}, "
                         "or TASK:METRIC such as wikitext2:perplexity or boolq:acc)")
    allowed = task_metrics(task)
    if metric not in allowed:
        raise ValueError(f"task '{task}' has no metric '{metric}' (it has: {', '.join(allowed)})")
    return task, metric


def task_metrics(task: str) -> tuple[str, ...]:
    if task in GREEDY_TASKS:
        return ("acc", "perplexity")
    if task in MC_TASKS or task.startswith("mc:"):
        return ("acc", "acc_norm")
    return ("perplexity",)


def metric_direction(name: str, objective: str | None = None) -> str:
    """'maximize' or 'minimize' (a ratio goes the objective's way)."""
    if name in MACHINE_METRICS:
        return MACHINE_METRICS[name][0]
    if name in RATIO_METRICS:
        return metric_direction(objective) if objective else "minimize"
    return "maximize" if name.rpartition(":")[2] in MAXIMIZED_TASK_METRICS else "minimize"


CONSTRAINT = re.compile(r"^(?P<metric>[^<>=!]+?)\s*(?P<op>[<>=!]+)\s*(?P<bound>\S.*)$")


def parse_constraint(text: str) -> Constraint:
    """`"decode_tok_s>=40"` -> Constraint; a ValueError names the part that is wrong."""
    text = text.strip()
    match = CONSTRAINT.match(text)
    if not match:
        raise ValueError(f"constraint '{text}': expected METRIC>=NUMBER or METRIC<=NUMBER")
    metric, op, raw = match["metric"].strip(), match["op"], match["bound"].strip()
    if op not in (">=", "<="):
        raise ValueError(f"constraint '{text}': operator '{op}' (use >= or <=)")
    try:
        bound = float(raw)
    except ValueError:
        raise ValueError(f"constraint '{text}': bound '{raw}' is not a number") from None
    if not math.isfinite(bound):
        raise ValueError(f"constraint '{text}': bound '{raw}' is not a finite number")
    try:
        parsed = task_metric(metric)
    except ValueError as exc:
        raise ValueError(f"constraint '{text}': {exc}") from None
    positive = parsed is None or parsed[1] == "perplexity"
    if op == "<=" and positive and bound <= 0:
        raise ValueError(f"constraint '{text}': {metric} is always above 0, so it can never be <= {raw}")
    if parsed is not None and parsed[1] in BOUNDED_01 and op == ">=" and bound > 1:
        raise ValueError(f"constraint '{text}': {metric} is at most 1, so it can never be >= {raw}")
    return Constraint(metric, op, bound)


def parse_constraints(items: list[str]) -> list[Constraint]:
    """Every constraint of every string (comma-separated); contradicting pairs are an error."""
    parsed = [parse_constraint(part) for item in items for part in item.split(",") if part.strip()]
    for low in (c for c in parsed if c.op == ">="):
        for high in (c for c in parsed if c.op == "<=" and c.metric == low.metric):
            if low.bound > high.bound:
                raise ValueError(f"constraints '{low}' and '{high}' cannot both hold")
    return parsed


def _custom(exc: ValueError) -> PydanticCustomError:
    return PydanticCustomError("lmopt_value", str(exc))  # the message alone, no "Value error," prefix


class FidelityConfig(Config):
    """How much work one measurement (and the pipeline it measures) gets."""

    limit: int | None = Field(default=20, ge=1)
    """Perplexity windows / multiple-choice items per task (None = all)."""
    seq_len: int = Field(default=2048, ge=16)
    """Perplexity window length in tokens."""
    calibration_samples: int | None = Field(default=None, ge=1)
    """Calibration windows of calibrated quantization/pruning (None = each method's default)."""
    finetune_steps: int = Field(default=100, ge=1)
    """Optimizer steps of a LoRA fine-tune candidate."""
    prefill_len: int = Field(default=256, ge=1)
    """Prompt tokens of the prefill speed measurement."""
    new_tokens: int = Field(default=64, ge=2)
    """Tokens decoded per speed measurement."""
    repeats: int = Field(default=3, ge=1)
    """Repeats of each speed measurement (the median is kept)."""


def _cheap() -> FidelityConfig:
    return FidelityConfig(limit=4, seq_len=1024, calibration_samples=16, finetune_steps=20, prefill_len=128,
                          new_tokens=16, repeats=2)


class SpaceConfig(Config):
    """The pipelines searched: [finetune] -> [prune] -> [quantize], then the runtime dtype and threads."""

    quantize: list[Literal["none", "rtn", "gptq", "awq", "rotate+gptq", "w8a8"]] = Field(
        default_factory=lambda: ["none", "rtn", "gptq", "awq", "rotate+gptq", "w8a8"], min_length=1)
    """Quantization methods tried (none = keep the weights as they are; rotate+gptq = a Hadamard-based
    rotation fused into the weights, then GPTQ: the best 4-bit quality measured on SmolLM2)."""
    bits: list[int] = Field(default_factory=lambda: [4, 8], min_length=1)
    """Weight bits of rtn/gptq/awq/rotate+gptq (w8a8 is 8-bit)."""
    group_sizes: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    """Group sizes below 8 bits (8 bits is per channel, the layout of the fast int8 kernel)."""
    lm_head_bits: list[int] = Field(default_factory=lambda: [8], min_length=1)
    """Bits of the lm_head under rtn/gptq/awq/rotate+gptq. 8 (per channel) is the default; 4 reads half the
    bytes per decoded token (the tied 49152 x 576 lm_head of SmolLM2 is the largest single read) at a
    quality cost."""
    prune: list[Literal["none", "structured", "wanda", "sparsegpt", "magnitude"]] = Field(
        default_factory=lambda: ["none", "structured"], min_length=1)
    """Pruning kinds tried. Unstructured sparsity (wanda, sparsegpt, magnitude) makes no dense CPU
    kernel faster or file smaller, so only structured pruning is tried by default."""
    prune_amounts: list[float] = Field(default_factory=lambda: [0.125, 0.25, 0.375], min_length=1)
    """Fraction removed: MLP channels (structured) or weights (unstructured)."""
    prune_layers: list[int] = Field(default_factory=lambda: [0, 2, 4], min_length=1)
    """Whole decoder layers removed by structured pruning (values above a quarter of the depth of the
    shallowest candidate are dropped)."""
    finetune: list[Literal["none", "lora"]] = Field(default_factory=lambda: ["none", "lora"], min_length=1)
    """Fine-tune first (LoRA, merged) on `train_data`; only searched when `train_data` is set."""
    dtypes: list[Literal["float32", "bfloat16"]] = Field(default_factory=lambda: ["float32", "bfloat16"],
                                                         min_length=1)
    """Compute dtype the candidate runs in."""
    threads: list[int] | None = None
    """Intra-op threads tried (default: this machine's physical cores)."""

    @field_validator("bits", "lm_head_bits")
    @classmethod
    def _bits(cls, value: list[int]) -> list[int]:
        if any(b < 2 or b > 8 for b in value):
            raise _custom(ValueError(f"bits {value}: each must be 2..8"))
        return value

    @field_validator("prune_amounts")
    @classmethod
    def _amounts(cls, value: list[float]) -> list[float]:
        if any(not 0 < a < 1 for a in value):
            raise _custom(ValueError(f"prune_amounts {value}: each must be in (0, 1)"))
        return value


class OptimizeConfig(Config):
    """Search pipelines of existing steps for the best model under constraints, measured on this machine."""

    models: list[str] = Field(default_factory=list)
    """Candidate base models (any `load_model` reference); the `optimize` step defaults to the recipe's."""
    objective: str = "wikitext2:perplexity"
    """The quality metric optimized, TASK:METRIC (e.g. wikitext2:perplexity, boolq:acc; docs/optimize.md
    lists them); decode speed is the second objective."""
    constraints: list[str] = Field(default_factory=list)
    """`METRIC>=NUMBER` / `METRIC<=NUMBER`, e.g. `decode_speedup>=2, ppl_ratio<=1.2, peak_mb<=800`."""
    budget_min: float = Field(default=60.0, gt=0)
    """Wall-clock minutes for the whole search, earlier runs on the same output included; no new trial
    starts when the time left is below a trial's typical duration."""
    n_trials: int | None = Field(default=None, ge=1)
    """Stop after this many trials in total (None = only the budget stops the search)."""
    output: str | None = None
    """Study, best model, front, report (default `$LMOPT_HOME/optimize/<key>`). Rerun with the same
    output to resume."""
    tasks: list[str] = Field(default_factory=list)
    """Further tasks measured and reported (not optimized), e.g. [boolq]."""
    data_dir: str | None = None
    """Evaluation data dir (shared/data layout)."""
    train_data: str | None = None
    """Fine-tuning data (jsonl/txt path or pydoc-train); when set, LoRA fine-tuning is searched too."""
    calibration: str | None = None
    """Calibration text source for quantization/pruning (default: each method's, pydoc-train)."""
    reference: str | None = None
    """The model ratios compare against (default: the first of `models`)."""
    quality_reference_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the reference's quality measurement (quality_ratio, ppl_ratio)."""
    speed_reference_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Dtype of the reference's speed measurement (decode_speedup). The reference runs with the most
    threads in the space."""
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    """The search space."""
    cheap: FidelityConfig = Field(default_factory=_cheap)
    """Fidelity of the estimate every trial gets."""
    full: FidelityConfig = Field(default_factory=FidelityConfig)
    """Fidelity of the measurement promising trials get (their figures make the front and the best)."""
    promote: Literal["promising", "all"] = "promising"
    """Which trials get the full measurement: `promising` = within `promote_margin` of every constraint
    and not dominated by another trial's estimate; `all` = every trial."""
    promote_margin: float = Field(default=0.1, ge=0)
    """Relative slack on each constraint when judging an estimate promising."""
    isolate: bool = True
    """Measure each candidate in a fresh process (its own peak_mb, a crash cannot end the search);
    off = in this process (faster start; peak_mb then includes the search's own memory)."""
    seed: int = 0
    """Sampler seed."""
    startup_trials: int = Field(default=6, ge=0)
    """Random trials before TPE models the space."""
    enqueue_defaults: bool = True
    """Start with a few known-good pipelines (int8 per channel, 4-bit GPTQ g128, ...) before sampling."""
    keep_artifacts: bool = False
    """Keep every candidate's final model; default: only the front's and the best's (prefixes shared
    with other pipelines are kept either way)."""

    @field_validator("cheap", mode="before")
    @classmethod
    def _cheap_over_its_defaults(cls, value: object) -> object:
        """A partial `cheap` map (`--set cheap.limit=2`) changes those fields of the cheap fidelity; the
        others keep the cheap defaults, not the full fidelity's."""
        if isinstance(value, dict):
            return {**_cheap().model_dump(), **value}
        return value

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: str) -> str:
        value = value.strip()
        if value in RATIO_METRICS:
            raise _custom(ValueError(f"objective '{value}': a ratio needs an objective to divide; "
                                     "use the task metric itself"))
        try:
            task_metric(value)
        except ValueError as exc:
            raise _custom(ValueError(f"objective '{value}': {exc}")) from None
        return value

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        try:
            return [str(c) for c in parse_constraints(value)]
        except ValueError as exc:
            raise _custom(exc) from None

    @model_validator(mode="after")
    def _ratios_fit_objective(self) -> OptimizeConfig:
        parsed = task_metric(self.objective)
        if parsed is not None and parsed[1] != "perplexity" and any(
                c.metric == "ppl_ratio" for c in self.parsed_constraints()):
            raise _custom(ValueError(f"constraint ppl_ratio: the objective '{self.objective}' is not a "
                                     "perplexity (use quality_ratio)"))
        return self

    def parsed_constraints(self) -> list[Constraint]:
        return parse_constraints(self.constraints)

    def directions(self) -> list[str]:
        """Optuna directions of the two objectives: the quality metric, then decode_tok_s."""
        return [metric_direction(self.objective), "maximize"]

    def measured_tasks(self) -> list[str]:
        """Every task a measurement runs: the objective's, the constraints', then `tasks`."""
        names = [self.objective, *(c.metric for c in self.parsed_constraints())]
        tasks = [parsed[0] for name in names if (parsed := task_metric(name)) is not None]
        return list(dict.fromkeys([*tasks, *self.tasks]))
