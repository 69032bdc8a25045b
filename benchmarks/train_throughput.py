"""Training throughput (tokens/s) and peak memory of LoRA vs full fine-tuning, fp32 vs bf16 autocast.

Each configuration runs in its own subprocess (so peak RSS is its own), one after the other in this
run: compare the ratios, not the absolute figures, on a shared machine.

    flock /tmp/lmopt-speed.lock nice -n 10 .venv/bin/python benchmarks/train_throughput.py --steps 6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CONFIGS = [("lora", "no"), ("lora", "bf16"), ("full", "no"), ("full", "bf16")]


def one(method: str, precision: str, steps: int, seq_len: int, batch: int) -> dict:
    """Train `steps` steps on PubMed abstracts; the first step (allocations) is not timed."""
    import os

    os.environ["LMOPT_QUIET"] = "1"
    from lmopt.hardware import apply_threads
    from lmopt.models import load_model
    from lmopt.settings import default_data_dir
    from lmopt.train import TrainConfig, finetune

    apply_threads()
    text = (default_data_dir() / "pubmedqa" / "pubmedqa_abstracts.txt").read_text()
    docs = [d for d in text.split("\n\n") if d.strip()][:200]
    loaded = load_model("smollm2-135m-instruct", dtype="float32")
    config = TrainConfig(
        method=method,
        mixed_precision=precision,
        seq_len=seq_len,
        batch_size=batch,
        lr=1e-4,
        val_fraction=0.0,
        log_every=1000,
    )
    # one untimed step first (allocator, kernel selection); the timed run continues on the same weights,
    # so only one model is ever in memory (peak RSS is then the run's own)
    warm = finetune(loaded, docs, config.model_copy(update={"max_steps": 1}))
    result = finetune(warm.model, docs, config.model_copy(update={"max_steps": steps}))
    m = result.metrics
    return {
        "method": method,
        "precision": precision,
        "tokens_per_s": m["tokens_per_s"],
        "trainable_parameters": m["trainable_parameters"],
        "peak_rss_mb": m["peak_memory_mb"],
        "steps": m["steps"],
        "tokens": m["tokens"],
        "warmup_s": warm.metrics["train_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "PRECISION"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.steps, args.seq_len, args.batch_size)))
        return
    rows = []
    for method, precision in CONFIGS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                method,
                precision,
                "--steps",
                str(args.steps),
                "--seq-len",
                str(args.seq_len),
                "--batch-size",
                str(args.batch_size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    base = rows[0]["tokens_per_s"]
    print("| method | precision | tokens/s | vs LoRA fp32 | trainable params | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['precision']} | {r['tokens_per_s']:.1f} | "
            f"{r['tokens_per_s'] / base:.2f}x | "
            f"{r['trainable_parameters']:,} | {r['peak_rss_mb']:.0f} |"
        )
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "batch": args.batch_size,
                "seq_len": args.seq_len,
                "steps": args.steps,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
