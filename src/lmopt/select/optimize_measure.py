"""Measuring one candidate on this machine: quality on the tasks, batch-1 speed, peak memory, size.

Order inside a measurement: load the model, time prefill and batch-1 decode
(`lmopt.evaluate.speed.benchmark_speed`), read the peak resident memory, then run the tasks. So `peak_mb`
is what loading and decoding with the candidate costs, not the evaluation harness's buffers (a
2048-token perplexity window of a 49k-token vocabulary holds 0.4 GB of logits alone).

Peak memory is read from `VmHWM` in /proc/self/status: the high-water mark of the process's own
address space. `getrusage`'s ru_maxrss is not usable in a child: Python starts children with vfork,
so the child's figure starts at the parent's peak. With `isolate` (the default) each measurement runs
in a fresh process (`python -m lmopt.select.optimize_measure SPEC OUT`), so the figure is the
candidate's own; in-process, the high-water mark is reset first (/proc/self/clear_refs) and the
figure includes the search's own memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field

from lmopt.configs import Config
from lmopt.errors import LmoptError
from lmopt.evaluate import run_task
from lmopt.evaluate.speed import benchmark_speed
from lmopt.hardware import apply_threads, peak_rss_mb, reset_peak_rss
from lmopt.io import size_on_disk_mb, write_json
from lmopt.models import count_parameters, load_model
from lmopt.select.optimize_config import FidelityConfig


class MeasureSpec(Config):
    """What to measure: a model, how to run it, which tasks, how much work."""

    model: str
    """Model reference (the final step's artifact, or a base model)."""
    dtype: str = "float32"
    """Compute dtype the model is loaded in."""
    threads: int = Field(default=1, ge=1)
    """torch intra-op threads."""
    tasks: list[str] = Field(default_factory=list)
    """Tasks evaluated (after the speed measurement)."""
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    """Windows/items per task, window length, speed measurement length."""
    data_dir: str | None = None
    """Evaluation data dir."""
    speed: bool = True
    """Time prefill and decode (off for a quality-only reference measurement)."""


def measure_here(spec: MeasureSpec) -> dict[str, Any]:
    """Measure in this process: `{"tasks": {task: metrics}, "decode_tok_s", ..., "seconds"}`."""
    started = time.time()
    reset_peak_rss()
    apply_threads(spec.threads)
    loaded = load_model(spec.model, dtype=spec.dtype)
    fid = spec.fidelity
    out: dict[str, Any] = {"dtype": spec.dtype, "threads": spec.threads,
                           "params_m": round(count_parameters(loaded.model) / 1e6, 3),
                           "size_mb": size_on_disk_mb(loaded.path) if loaded.path else None}
    if spec.speed:
        speed = benchmark_speed(loaded.model, loaded.tokenizer, prefill_len=fid.prefill_len, prompt_len=32,
                                new_tokens=fid.new_tokens, batch_sizes=(1,), repeats=fid.repeats,
                                path=loaded.path)
        decode = speed["decode_tokens_per_s_bs1"]
        out.update(decode_tok_s=decode, prefill_tok_s=speed["prefill_tokens_per_s"],
                   ttft_ms=round(1000 * speed["time_to_first_token_s"], 2),
                   token_ms=round(1000 / decode, 3) if decode else None)
    out["peak_mb"] = round(peak_rss_mb(), 1)
    out["tasks"] = {task: run_task(loaded, task, limit=fid.limit, seq_len=fid.seq_len, data_dir=spec.data_dir)
                    for task in spec.tasks}
    out["seconds"] = round(time.time() - started, 2)
    return out


def measure_isolated(spec: MeasureSpec, scratch: Path) -> dict[str, Any]:
    """Measure in a fresh Python process; its one-line error becomes an LmoptError here."""
    scratch.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex[:12]
    spec_file, result_file = scratch / f"{name}.spec.json", scratch / f"{name}.result.json"
    write_json(spec_file, spec.to_dict())
    env = {**os.environ, "LMOPT_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run([sys.executable, "-m", "lmopt.select.optimize_measure", str(spec_file),
                               str(result_file)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0 or not result_file.exists():
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            detail = lines[-1] if lines else f"exit status {proc.returncode}"
            raise LmoptError(f"measuring {spec.model}: {detail.removeprefix('lmopt: error: ')}")
        return json.loads(result_file.read_text())
    finally:
        spec_file.unlink(missing_ok=True)
        result_file.unlink(missing_ok=True)


def measure(spec: MeasureSpec, isolate: bool, scratch: Path) -> dict[str, Any]:
    """One measurement, in a fresh process (`isolate`) or in this one."""
    if isolate:
        return measure_isolated(spec, scratch)
    return measure_here(spec)


def _exit_with_parent() -> None:
    """End this measuring process when the search that started it dies (it would measure for nobody)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    """`python -m lmopt.select.optimize_measure SPEC.json RESULT.json`."""
    _exit_with_parent()
    spec = MeasureSpec.parse(json.loads(Path(argv[0]).read_text()), where=argv[0])
    try:
        result = measure_here(spec)
    except LmoptError as exc:
        print(f"lmopt: error: {exc}", file=sys.stderr)
        return 2
    write_json(argv[1], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
