"""`SelectConfig`: what `select` measures and how it chooses. Importing it is instant (no torch): the CLI
generates `lmopt select`'s options from it at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from lmopt.configs import Config
from lmopt.errors import LmoptError
from lmopt.select.selection_constraints import Constraint, metric, parse_constraints

DEFAULT_OBJECTIVE = {"classify": "accuracy", "generate": "ref_nll", "text2text": "ref_nll"}


def _as_field_error(exc: LmoptError) -> PydanticCustomError:
    return PydanticCustomError("select", str(exc))


class SelectConfig(Config):
    """Architecture selection: candidates measured on the user's data, chosen under constraints."""

    task_type: Literal["generate", "classify", "text2text"] = "classify"
    """What the model must do: `classify` (text -> label), `generate` (prompt -> response), `text2text`."""
    candidates: list[str] = Field(default_factory=list)
    """Candidates as MODEL[:WAY]: an alias (smollm2-135m-instruct, gemma-3-270m, all-minilm-l6-v2), a
    directory or a .gguf; WAY: probe (encoders), zero-shot or lora (decoders), zero-shot or finetune
    (encoder-decoders)."""
    data: str | None = None
    """JSONL rows of the task (classify: text+label, or query+choices+gold; generate: prompt+response,
    input+output or instruction+output)."""
    eval_data: str | None = None
    """Separate evaluation rows (default: the rows of `data` after the first `train_rows`)."""
    train_rows: int | None = Field(default=None, ge=1)
    """The first N rows of `data` are for training, the rest for evaluation (default: half)."""
    train_limit: int | None = Field(default=None, ge=1)
    """Use at most this many training rows."""
    eval_limit: int | None = Field(default=200, ge=1)
    """Evaluate on at most this many rows (None: all)."""
    constraints: str = ""
    """Comma-separated METRIC<=N / METRIC>=N, e.g. "latency_p50_ms<=50,peak_mb<=800"."""
    objective: str | None = None
    """The metric the recommendation maximizes or minimizes (default: accuracy for classify, ref_nll
    otherwise)."""
    pareto_metrics: list[str] | None = None
    """Metrics of the Pareto front (default: the objective, latency_p50_ms, peak_mb, adapt_s)."""
    prompt_template: str = "{text}\nAnswer:"
    """Classify: how a text becomes a prompt for decoders and encoder-decoders ({text} is replaced)."""
    dtype: str = "float32"
    """Weights of every candidate while measured (float32, bfloat16, auto)."""
    threads: int | None = Field(default=None, ge=1)
    """Torch threads (default: lmopt's, the physical cores)."""
    batch_size: int = Field(default=8, ge=1)
    """Eval items scored together (the throughput figure)."""
    max_length: int = Field(default=512, ge=8)
    """Tokens kept of each input (the end is kept for decoders, the start for encoders)."""
    latency_items: int = Field(default=20, ge=2)
    """Requests timed one by one for the latency percentiles."""
    latency_new_tokens: int = Field(default=16, ge=1)
    """Generate / text2text: tokens generated per timed request."""
    train_steps: int = Field(default=100, ge=1)
    """Optimizer steps of LoRA and encoder-decoder fine-tuning."""
    train_batch_size: int = Field(default=8, ge=1)
    lora_lr: float | None = Field(default=None, gt=0)
    """LoRA's peak learning rate (None: fine-tuning's LoRA default, `TrainConfig.DEFAULT_LR`, 1e-3)."""
    lora_r: int = Field(default=8, ge=1)
    finetune_lr: float = Field(default=5e-4, gt=0)
    """Encoder-decoder fine-tuning learning rate (every weight trains)."""
    probe_c: float = Field(default=1.0, gt=0)
    """Inverse L2 strength of the encoder probe's logistic regression (scikit-learn's C)."""
    seed: int = 0
    output: str | None = None
    """Directory for select.json and select.md (the table, the front, the recommendation)."""

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: str) -> str:
        try:
            parse_constraints(value)
        except LmoptError as exc:
            raise _as_field_error(exc) from None
        return value

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: str | None, info: ValidationInfo) -> str | None:
        try:
            name = None if value is None else metric(value).name
        except LmoptError as exc:
            raise _as_field_error(exc) from None
        task_type = info.data.get("task_type", "classify")
        if name == {"classify": "ref_nll"}.get(task_type, "accuracy"):
            raise PydanticCustomError("select", f"{name} is not measured for task type {task_type} "
                                                f"(use {DEFAULT_OBJECTIVE[task_type]} or a speed/memory metric)")
        return name

    @field_validator("pareto_metrics")
    @classmethod
    def _pareto(cls, value: list[str] | None) -> list[str] | None:
        try:
            return None if value is None else [metric(v).name for v in value]
        except LmoptError as exc:
            raise _as_field_error(exc) from None

    def parsed_constraints(self) -> list[Constraint]:
        return parse_constraints(self.constraints)

    def the_objective(self) -> str:
        return self.objective or DEFAULT_OBJECTIVE[self.task_type]

    def front_metrics(self) -> list[str]:
        return self.pareto_metrics or [self.the_objective(), "latency_p50_ms", "peak_mb", "adapt_s"]
