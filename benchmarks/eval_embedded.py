"""Quality of the embedded SmolLM2-135M-Instruct: WikiText-2 perplexity and zero-shot accuracies.

Run: .venv/bin/python benchmarks/eval_embedded.py --data-dir ../shared/data [--limit 500] [--dtype auto]
Prints a table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from lmopt.evaluate import evaluate
from lmopt.hardware import apply_threads, detect_hardware
from lmopt.models import load_model

TASKS = ["piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa", "boolq"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--limit", type=int, default=None, help="items per multiple-choice task")
    parser.add_argument("--ppl-limit", type=int, default=None, help="WikiText-2 windows")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tasks", nargs="*", default=TASKS)
    args = parser.parse_args()
    apply_threads()
    loaded = load_model("smollm2-135m-instruct", dtype=args.dtype)
    started = time.time()
    ppl = evaluate(loaded, ["wikitext2"], seq_len=2048, limit=args.ppl_limit, data_dir=args.data_dir)
    mc = evaluate(loaded, args.tasks, limit=args.limit, data_dir=args.data_dir, batch_size=16)
    tasks = {**ppl["tasks"], **mc["tasks"]}
    for name, metrics in tasks.items():
        print(f"{name:15s} " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in metrics.items()))
    hw = detect_hardware()
    print(json.dumps({"model": "smollm2-135m-instruct", "dtype": str(loaded.model.dtype), "tasks": tasks,
                      "limit": args.limit, "seconds": round(time.time() - started, 1),
                      "machine": f"{hw.cpu}, {hw.physical_cores} cores", "host": platform.node()}))


if __name__ == "__main__":
    main()
