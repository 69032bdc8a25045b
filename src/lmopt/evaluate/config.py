"""Configs of the measuring steps, `evaluate` and `bench` (no torch: validating a recipe stays instant)."""

from __future__ import annotations

from pydantic import Field

from lmopt.configs import Config


class EvaluateConfig(Config):
    """Quality of the current model on a list of tasks (the model is unchanged)."""

    tasks: list[str] = Field(default_factory=lambda: ["pydoc"])
    """Task names: perplexity sources (pydoc, wikitext2, a .txt/.jsonl file), multiple-choice tasks
    (piqa, arc_easy, arc_challenge, boolq, winogrande, openbookqa, copa, lambada) or mc:PATH."""
    limit: int | None = Field(default=None, ge=1)
    """First N windows (perplexity) or items (multiple choice)."""
    seq_len: int = Field(default=2048, ge=2)
    """Perplexity window length in tokens."""
    batch_size: int = Field(default=8, ge=1)
    """Sequences per forward pass."""


class BenchConfig(Config):
    """Speed and memory of the current model: prefill, decode at several batch sizes, time to first token."""

    prefill_len: int = Field(default=512, ge=1)
    """Prompt tokens of the prefill measurement."""
    prompt_len: int = Field(default=32, ge=1)
    """Prompt tokens before the decode measurement."""
    new_tokens: int = Field(default=64, ge=2)
    """Tokens decoded per measurement."""
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8])
    """Decode batch sizes."""
    repeats: int = Field(default=3, ge=1)
    """Repeats of each measurement (the median is reported)."""
    measure_bandwidth: bool = True
    """Measure memory bandwidth and report the decode roofline."""
    dense_copies: bool = True
    """Quantized models: also measure prefill with de-quantized bf16 copies of the weights kept for
    prompt-sized inputs (what `lmopt serve` does: faster prompts, more memory), and their size."""
