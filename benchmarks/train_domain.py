"""Domain adaptation of the embedded model on PubMedQA abstracts: LoRA vs full at the same budget.

Split (fixed): the 1000 abstracts in file order; the last 100 are the held-out test set, never trained
on; the first 900 are training data (5% of them, by seed, for validation during training).
Measured before and after each run, fp32, the `lmopt.evaluate.perplexity` protocol (512-token windows):
held-out PubMed perplexity and WikiText-2 test perplexity (forgetting).
Budget, either:
- `--budget-min M`: each method trains until its process CPU time reaches M x 60 x threads seconds, the
  compute that M minutes of a dedicated 2-core machine give (a wall budget on a shared machine buys an
  unknown amount of compute); or
- `--lora-tokens/--full-tokens`: a token budget, e.g. what 15 minutes of this CPU train at its measured
  throughput; the run then goes anywhere (a GPU) and trains exactly those tokens, cosine schedule.

    nice -n 10 .venv/bin/python benchmarks/train_domain.py --budget-min 5
    python benchmarks/train_domain.py --lora-tokens 149400 --full-tokens 121500   # 15 min at 166/135 tok/s
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def split(path: Path) -> tuple[list[str], str]:
    docs = [d.strip() for d in path.read_text().split("\n\n") if d.strip()]
    return docs[:-100], "\n\n".join(docs[-100:])


def measure(loaded, pubmed_test: str, wiki: str, windows: int) -> dict:
    from lmopt.evaluate import perplexity

    return {
        "pubmed_ppl": perplexity(loaded.model, loaded.tokenizer, pubmed_test, 512, windows)["perplexity"],
        "wikitext2_ppl": perplexity(loaded.model, loaded.tokenizer, wiki, 512, windows)["perplexity"],
    }


class CpuBudget:
    """Stop the run once this process has used `seconds` of CPU time since it was created."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.process_time(), seconds

    def used(self) -> float:
        return time.process_time() - self.start

    def on_log(self, step: int, metrics: dict) -> bool:
        return self.used() >= self.seconds


def train_one(method: str, docs: list[str], budget_s: float, args) -> tuple:
    import math

    from lmopt.models import load_model
    from lmopt.train import TrainConfig, finetune

    loaded = load_model(args.model, dtype="float32")
    tokens = args.lora_tokens if method == "lora" else args.full_tokens
    steps = math.ceil(tokens / (args.batch_size * args.seq_len)) if tokens else None
    lr = args.lora_lr if method == "lora" else args.full_lr
    config = TrainConfig(
        method=method,
        lr=lr,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        scheduler="cosine" if steps else "constant",
        max_steps=steps,
        warmup_steps=10,
        epochs=3,
        mixed_precision=args.precision,
        val_fraction=0.05,
        max_val_batches=2,
        eval_every=50,
        weight_decay=0.0,
        log_every=5,
        seed=0,
    )
    budget = CpuBudget(budget_s if not steps else float("inf"))
    wall = time.perf_counter()
    result = finetune(loaded, docs, config, callbacks=[budget])
    return result, budget.used(), time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-min", type=float, default=5.0)
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--full-lr", type=float, default=3e-5)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--lora-tokens", type=int, default=None)
    parser.add_argument("--full-tokens", type=int, default=None)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    os.environ.setdefault("LMOPT_QUIET", "1")
    import torch

    from lmopt.data.text import wikitext2_text
    from lmopt.hardware import apply_threads
    from lmopt.models import load_model
    from lmopt.settings import default_data_dir

    apply_threads()
    threads = torch.get_num_threads()
    docs, test = split(default_data_dir() / "pubmedqa" / "pubmedqa_abstracts.txt")
    wiki = wikitext2_text()
    before = measure(load_model(args.model, dtype="float32"), test, wiki, args.windows)
    print(f"before: {before}", flush=True)
    rows = []
    for method in args.methods.split(","):
        result, cpu_s, wall_s = train_one(method, docs, args.budget_min * 60 * threads, args)
        after = measure(result.model, test, wiki, args.windows)
        m = result.metrics
        row = {
            "method": method,
            **after,
            "pubmed_change": after["pubmed_ppl"] / before["pubmed_ppl"] - 1,
            "wikitext2_change": after["wikitext2_ppl"] / before["wikitext2_ppl"] - 1,
            "steps": m["steps"],
            "tokens": m["tokens"],
            "cpu_s": round(cpu_s, 1),
            "wall_s": round(wall_s, 1),
            "tokens_per_s": m["tokens_per_s"],
            "trainable": m["trainable_parameters"],
            "val_curve": [(h["step"], round(h["eval_loss"], 4)) for h in result.history],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"\nbefore: PubMed held-out ppl {before['pubmed_ppl']:.3f}, "
        f"WikiText-2 ppl {before['wikitext2_ppl']:.3f}"
    )
    print("| method | PubMed ppl | change | WikiText-2 ppl | change | steps | tokens | CPU s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['pubmed_ppl']:.3f} | {r['pubmed_change']:+.1%} | "
            f"{r['wikitext2_ppl']:.3f} | "
            f"{r['wikitext2_change']:+.1%} | {r['steps']} | {r['tokens']} | {r['cpu_s']} | {r['wall_s']} |"
        )
    print(
        json.dumps(
            {
                "benchmark": "train_domain",
                "budget_min": args.budget_min,
                "threads": threads,
                "windows": args.windows,
                "precision": args.precision,
                "device": str(result.model.model.device),
                "lora_tokens": args.lora_tokens,
                "full_tokens": args.full_tokens,
                "before": before,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
