"""The `evaluate` and `bench` steps: measure the current model, leave it unchanged."""

from __future__ import annotations

from lmopt.compress.quantize.autotune import kernel_plan
from lmopt.evaluate import evaluate_model
from lmopt.evaluate.config import BenchConfig, EvaluateConfig
from lmopt.evaluate.speed import benchmark_speed
from lmopt.hardware import apply_threads, measure_bandwidth
from lmopt.models import load_model
from lmopt.step import Step, StepContext, StepResult


def evaluate_step(ctx: StepContext, config: EvaluateConfig) -> StepResult:
    """Evaluate the current model on a list of tasks."""
    results = evaluate_model(ctx.require_model(), config.tasks, limit=config.limit, seq_len=config.seq_len,
                             data_dir=ctx.data_dir, dtype=ctx.dtype, batch_size=config.batch_size)
    return StepResult(metrics=results["tasks"], model_hash=results["model_hash"])


def bench_step(ctx: StepContext, config: BenchConfig) -> StepResult:
    """Measure speed and memory of the current model."""
    apply_threads()
    loaded = load_model(ctx.require_model(), dtype=ctx.dtype)
    bandwidth = measure_bandwidth() if config.measure_bandwidth else None
    speed = benchmark_speed(loaded.model, loaded.tokenizer, prefill_len=config.prefill_len,
                            prompt_len=config.prompt_len, new_tokens=config.new_tokens,
                            batch_sizes=tuple(config.batch_sizes), repeats=config.repeats,
                            path=loaded.path, bandwidth_gbs=bandwidth, dense_copies=config.dense_copies)
    return StepResult(metrics={"speed": speed, "kernels": kernel_plan(loaded.model)}, model_hash=loaded.hash)


EVALUATE = Step("evaluate", EvaluateConfig, evaluate_step, per_task=True)
BENCH = Step("bench", BenchConfig, bench_step, cache=False)
