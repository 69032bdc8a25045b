"""The `evaluate` and `bench` steps: measure the current model, leave it unchanged."""

from __future__ import annotations

from pydantic import Field

from lmopt.configs import Config
from lmopt.pipeline.steps import StepContext, StepResult, register_step


class EvaluateConfig(Config):
    tasks: list[str] = Field(default_factory=lambda: ["pydoc"])
    """Task names (`lmopt eval --help`): perplexity sources, multiple-choice tasks or mc:PATH."""
    limit: int | None = Field(default=None, ge=1)
    """First N windows (perplexity) or items (multiple choice)."""
    seq_len: int = Field(default=2048, ge=2)
    """Perplexity window length in tokens."""
    batch_size: int = Field(default=8, ge=1)


class BenchConfig(Config):
    prefill_len: int = Field(default=512, ge=1)
    prompt_len: int = Field(default=32, ge=1)
    new_tokens: int = Field(default=64, ge=2)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8])
    repeats: int = Field(default=3, ge=1)
    measure_bandwidth: bool = True
    """Measure memory bandwidth and report the decode roofline."""


@register_step("evaluate", EvaluateConfig)
def evaluate_step(ctx: StepContext, config: EvaluateConfig) -> StepResult:
    """Evaluate the current model on a list of tasks."""
    from lmopt.evaluate import evaluate_model

    results = evaluate_model(ctx.model, config.tasks, limit=config.limit, seq_len=config.seq_len,
                             data_dir=ctx.data_dir, dtype=ctx.dtype, batch_size=config.batch_size,
                             registry=ctx.registry)
    return StepResult(metrics=results["tasks"])


@register_step("bench", BenchConfig)
def bench_step(ctx: StepContext, config: BenchConfig) -> StepResult:
    """Measure speed and memory of the current model."""
    from lmopt.evaluate.speed import benchmark_speed
    from lmopt.hardware import apply_threads, measure_bandwidth

    apply_threads()
    loaded = ctx.load_model()
    bandwidth = measure_bandwidth() if config.measure_bandwidth else None
    speed = benchmark_speed(loaded.model, loaded.tokenizer, prefill_len=config.prefill_len,
                            prompt_len=config.prompt_len, new_tokens=config.new_tokens,
                            batch_sizes=tuple(config.batch_sizes), repeats=config.repeats,
                            path=loaded.path, bandwidth_gbs=bandwidth)
    if ctx.registry is not None:
        ctx.registry.record("bench", str(ctx.model), speed, model_hash=loaded.hash, config=config.to_dict())
    return StepResult(metrics={"speed": speed})
