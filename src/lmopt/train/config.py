"""Typed configs of the training verbs: `TrainConfig` (finetune) and `DistillConfig` (distill).

Both validate themselves, reject unknown fields and round-trip to YAML (see `lmopt.configs.Config`).
Importing this module is instant (no torch): the CLI and recipe validation use it up front.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from lmopt.configs import Config

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(Config):
    """How to fine-tune: data handling, method (full or LoRA), optimizer, regularization, checkpoints."""

    version: int = 1
    # --- data ---
    format: Literal["auto", "text", "chat"] = "auto"
    """`text`: raw text packed into `seq_len` blocks (continued pre-training); `chat`: prompt/response
    rows rendered with the model's chat template, loss on the response tokens only; `auto` guesses from
    the rows (a `text` field or a .txt file -> text)."""
    seq_len: int = Field(default=512, ge=8)
    """Tokens per packed block (text) or the truncation length of a conversation (chat)."""
    val_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Share of documents / conversations held out for validation (chosen by `seed`), when no
    separate validation data is given."""
    max_val_batches: int | None = Field(default=None, ge=1)
    """Cap on validation batches per evaluation (None = the whole split)."""
    response_only: bool = True
    """Chat data: compute the loss only on the assistant tokens (and their end-of-turn token)."""
    # --- method ---
    method: Literal["full", "lora"] = "full"
    """`full`: every weight trains; `lora`: low-rank adapters (peft), merged into the weights on save."""
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    lora_targets: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """Module names (suffixes) that get adapters."""
    merge_lora: bool = True
    """Merge the adapters into the base weights in the returned/saved model (a plain HF model)."""
    # --- schedule ---
    epochs: float = Field(default=1.0, gt=0)
    """Passes over the training data (fractions allowed); ignored when `max_steps` is set."""
    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps to run (overrides `epochs`)."""
    max_minutes: float | None = Field(default=None, gt=0)
    """Wall-clock budget of the training loop (evaluations and checkpoints included)."""
    batch_size: int = Field(default=4, ge=1)
    """Sequences per micro-batch (per process under `accelerate launch`)."""
    grad_accum: int = Field(default=1, ge=1)
    """Micro-batches per optimizer step."""
    lr: float | None = Field(default=None, gt=0)
    """Peak learning rate; None (the default) = the method's default, `DEFAULT_LR`: 5e-5 for full
    fine-tuning, 1e-3 for LoRA. The LoRA rate comes from BENCHMARKS.md: the PubMed domain-adaptation
    run (#training, -18.4% held-out perplexity) used 1e-3, and in the LoRA tuning benchmark (#tuning,
    lr log-uniform 1e-5..5e-3) every best-found config moved the rate up from 1e-4 to 3.4e-4..5e-3,
    4 of 5 to 2.3e-3 or more; 1e-3 is the middle of that range, safe for long runs too. LoRA's
    updates start from zero in a low-rank subspace and want ~10-30x the full fine-tuning rate.
    A rate given explicitly always wins."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup (to 0 at the last step for cosine/linear)."""
    warmup_steps: int = Field(default=0, ge=0)
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Warmup as a share of the steps (used when `warmup_steps` is 0)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # --- regularization ---
    weight_decay: float = Field(default=0.0, ge=0.0)
    """AdamW decoupled decay; never applied to norms, biases or embeddings."""
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    """Set attention/hidden dropout where the architecture has it (None = keep the model's)."""
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Gradient clipping by global norm (None = off)."""
    # --- evaluation, early stopping, checkpoints ---
    eval_every: int | None = Field(default=None, ge=1)
    """Validate every N optimizer steps (None = only at the end)."""
    eval_before: bool = False
    """Also validate before the first step (the 'before' figure; the untrained weights can win 'best')."""
    early_stopping_patience: int | None = Field(default=None, ge=1)
    """Stop after this many evaluations without a validation-loss improvement."""
    early_stopping_min_delta: float = Field(default=0.0, ge=0.0)
    load_best: bool = True
    """End with the weights of the best validation loss (not the last step)."""
    save_every: int | None = Field(default=None, ge=1)
    """Checkpoint every N optimizer steps into the run dir (needs a run dir)."""
    keep_checkpoints: int = Field(default=1, ge=1)
    resume: bool = True
    """Continue from the newest checkpoint in the run dir when there is one."""
    # --- memory ---
    memory_budget_mb: float | None = Field(default=3000.0, gt=0)
    """Training memory to stay under (MB). When the estimate for one micro-batch (weights, gradients and
    AdamW state of the trainable ones, per-layer activations, fp32 logits with their log-softmax and
    gradient) exceeds it, the chunked cross-entropy turns on (the 49k-token logits never exist whole),
    then, if still over, gradient checkpointing (each layer's activations recomputed in the backward
    pass, ~30% more compute). None = neither unless asked below. See `setup.memory_plan`."""
    gradient_checkpointing: bool | None = None
    """Recompute layer activations in the backward pass; None = decided by `memory_budget_mb`."""
    chunked_ce: bool | None = None
    """Cross-entropy fused with the output head, 1024 positions of logits at a time (`losses.chunked_ce`;
    fine-tuning only: distillation needs the whole logits); None = decided by `memory_budget_mb`."""
    malloc_mmap_threshold_mb: float | None = Field(default=None, ge=0, le=32)
    """glibc only: allocations of at least this many MB get their own mapping, returned to the system on
    free, so the activations each step frees cannot pile up as heap fragmentation (measured on the 135M
    model, LoRA 4 x 512: peak 4.4 GB -> 1.8 GB for 1.3 GB of live tensors, steps ~30% slower from the
    page faults; `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in the environment brings that to ~9%). Applies
    to the training loop only (`hardware.bounded_heap`). None = 4 when `memory_budget_mb` is set and
    chunking or checkpointing is on (planned or asked for); 0 = leave the allocator as it is."""
    # --- misc ---
    mixed_precision: Literal["no", "bf16"] = "no"
    """`bf16`: autocast the forward pass to bfloat16 (master weights stay float32)."""
    seed: int = 0
    log_every: int = Field(default=10, ge=1)

    DEFAULT_LR: ClassVar[dict[str, float]] = {"full": 5e-5, "lora": 1e-3}
    """Default peak learning rate per method (see `lr`)."""

    @model_validator(mode="before")
    @classmethod
    def _method_lr(cls, data: Any) -> Any:
        """Resolve `lr: None` to the method's default before validation (an explicit lr is kept)."""
        if isinstance(data, dict) and data.get("lr") is None:
            method = data.get("method", cls.model_fields["method"].default)
            data = {**data, "lr": cls.DEFAULT_LR.get(method, cls.DEFAULT_LR["full"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.early_stopping_patience is not None and self.eval_every is None:
            raise ValueError("early_stopping_patience needs eval_every")
        return self


class DistillConfig(TrainConfig):
    """Teacher -> student distillation: a training config plus the distillation loss settings."""

    format: Literal["auto", "text", "chat"] = "text"
    DEFAULT_LR: ClassVar[dict[str, float]] = {"full": 2e-4, "lora": 1e-3}
    """Default peak learning rate per method when `lr` is None (the student's weights move further
    than in fine-tuning: a cut student starts far from any good model)."""
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    """Divergence between teacher and student next-token distributions."""
    temperature: float = Field(default=2.0, gt=0)
    """Both distributions are softened by T; the loss is scaled by T^2 (Hinton et al.)."""
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    """Weight of the plain cross-entropy: loss = alpha * CE + (1 - alpha) * T^2 * divergence."""
    jsd_beta: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Generalized JSD mixture weight: M = beta * P_teacher + (1 - beta) * P_student."""
    hidden_weight: float = Field(default=0.0, ge=0.0)
    """Weight of hidden-state matching (MSE of the student layers, through a learned projection when
    widths differ, against evenly mapped teacher layers); 0 = off."""
    teacher_topk: int | None = Field(default=None, ge=1)
    """Cache the teacher's top-k logits to disk once and reuse them every epoch (None = run the teacher
    on the fly). The divergence is then computed over those k tokens, both distributions renormalized."""


class FinetuneStepConfig(TrainConfig):
    """The `finetune` recipe step / `lmopt train`: a training config plus where the data is."""

    data: str | None = None
    """Training data path (default: the recipe's `data`); relative to the recipe's folder."""
    val_data: str | None = None
    """Validation data path (default: a `val_fraction` split of the training data)."""
    save_every: int | None = Field(default=200, ge=1)


class DistillStepConfig(DistillConfig):
    """The `distill` recipe step / `lmopt distill`: a distillation config plus data and student.

    The recipe's current model is the teacher. The student is `student` (any model sharing the
    teacher's tokenizer) or, when that is None, the teacher cut to `student_layers` layers.
    """

    data: str | None = None
    """Training data path (default: the recipe's `data`)."""
    val_data: str | None = None
    save_every: int | None = Field(default=200, ge=1)

    student: str | None = None
    """A model reference for the student (alias, directory, .gguf, hub id)."""
    student_layers: int | None = Field(default=None, ge=1)
    """Build the student from the teacher by keeping this many of its layers."""
    layer_selection: Literal["uniform", "block_influence"] = "uniform"
    """`uniform`: every k-th layer (first and last kept); `block_influence`: the layers that change
    their input most (1 - cosine of input and output hidden states, ShortGPT) on the training data."""

    @model_validator(mode="after")
    def _need_student(self) -> DistillStepConfig:
        if (self.student is None) == (self.student_layers is None):
            raise ValueError("give exactly one of student and student_layers")
        return self
