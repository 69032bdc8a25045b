"""Benchmark: can `lmopt optimize` find a model of the embedded SmolLM2-135M-Instruct whose batch-1 decode is at
least 2x bf16's and whose WikiText-2 perplexity is at most 1.20x fp32's, within 60 minutes on 2 CPU cores?

Constraints `decode_speedup>=2` (decode tokens/s over the base model's in bfloat16, 2 threads) and
`ppl_ratio<=1.2` (WikiText-2 test perplexity over the base model's in float32, same windows). Objective:
WikiText-2 perplexity; decode speed is the second objective. Space: quantization (none, RTN, GPTQ, AWQ,
rotate+GPTQ; 3, 4 and 8 bits; groups 32/64/128; lm_head 8 or 4 bits), structured pruning (MLP 12.5/25%,
0/2/4 layers), dtype (bf16/fp32), 2 threads. W8A8 is left out (+23% perplexity on this model,
BENCHMARKS.md#quantization). Cheap estimates: 2 windows of 1024 tokens, 16 calibration windows, 16 decoded
tokens; full: 8 windows of 2048 tokens, each method's own calibration, 64 decoded tokens, 3 repeats.

Run:    nice -n 10 .venv/bin/python benchmarks/optimize_embedded.py --budget-min 60 --output /tmp/opt-embedded
        (rerun the same command after a kill: it resumes; --tiny: a tiny random model, a 3-trial smoke test)
Writes the search's files under --output (report.md, front.json, pareto.png, best/, recipes/) and prints
the front and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from lmopt.models import save_tiny_llama
from lmopt.select.optimize import optimize
from lmopt.select.optimize_config import OptimizeConfig
from lmopt.select.optimize_outputs import front_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GOAL = ["decode_speedup>=2", "ppl_ratio<=1.2"]
SPACE = {"quantize": ["none", "rtn", "gptq", "awq", "rotate+gptq"], "bits": [3, 4, 8], "group_sizes": [32, 64, 128],
         "lm_head_bits": [8, 4], "prune": ["none", "structured"], "prune_amounts": [0.125, 0.25],
         "prune_layers": [0, 2, 4], "dtypes": ["bfloat16", "float32"]}
CHEAP = {"limit": 2, "seq_len": 1024, "calibration_samples": 16, "prefill_len": 128, "new_tokens": 16, "repeats": 2}
FULL = {"limit": 8, "seq_len": 2048, "prefill_len": 256, "new_tokens": 64, "repeats": 3}
TINY = {"limit": 2, "seq_len": 64, "calibration_samples": 4, "prefill_len": 16, "new_tokens": 4, "repeats": 1}


def build_config(args: argparse.Namespace, model: str) -> OptimizeConfig:
    fields: dict[str, Any] = {
        "models": [model], "objective": "wikitext2:perplexity", "constraints": GOAL, "budget_min": args.budget_min,
        "output": args.output, "data_dir": str(args.data_dir), "quality_reference_dtype": "float32",
        "speed_reference_dtype": "bfloat16", "space": {**SPACE, "threads": [args.threads]},
        "cheap": CHEAP, "full": {**FULL, "limit": args.windows}, "isolate": not args.in_process, "seed": args.seed,
    }
    if args.tiny:  # the same search on a random 2-layer model: checks the script in a minute or two
        fields.update(n_trials=3, budget_min=10, cheap=TINY, full=TINY,
                      space={**SPACE, "threads": [1], "bits": [4, 8], "group_sizes": [32], "prune_layers": [0]})
    return OptimizeConfig.parse(fields, where="optimize_embedded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--budget-min", type=float, default=60.0)
    parser.add_argument("--output", default=None, help="search dir (default: a fresh temporary one)")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=FULL["limit"], help="WikiText-2 windows, full fidelity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process", action="store_true", help="measure in this process (peak_mb less exact)")
    parser.add_argument("--tiny", action="store_true", help="smoke test on a tiny random model")
    args = parser.parse_args()
    os.environ.setdefault("LMOPT_QUIET", "1")  # no progress bars between the trial lines
    args.output = args.output or tempfile.mkdtemp(prefix="lmopt-optimize-")
    model = args.model
    if args.tiny:
        model = str(save_tiny_llama(Path(args.output) / "tiny-model"))
        args.output = str(Path(args.output) / "search")
    config = build_config(args, model)
    console = Console()
    started = time.time()
    result = optimize(config, log=lambda line: console.print(line, markup=False, highlight=False))
    console.print(front_table(config, result.state))
    best = result.best
    summary = {"goal": GOAL, "met": bool(best and best["feasible"]), "best_trial": best and best["number"],
               "best_pipeline": best and best["label"], "best_figures": best and best["full"],
               "reference": result.state["reference"].get("full"), "front": [
                   {"trial": r["number"], "pipeline": r["label"], **{k: r["full"].get(k) for k in (
                       "wikitext2:perplexity", "ppl_ratio", "decode_tok_s", "decode_speedup", "peak_mb",
                       "size_mb")}} for r in result.front],
               "counts": result.counts, "stopped": result.stopped, "minutes_used": round(result.spent_s / 60, 1),
               "minutes_this_run": round((time.time() - started) / 60, 1), "output": str(result.output)}
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
