"""Unstructured (50%) and 2:4 pruning of the embedded model: WikiText-2 perplexity of magnitude, Wanda and
SparseGPT next to dense (the foundation's protocol: raw test split, 2048-token windows, first N windows).

    nice -n 10 .venv/bin/python benchmarks/prune_unstructured.py --windows 20 --calib-samples 32

Every method prunes a fresh copy of the fp32 model; all rows are evaluated in the same dtype. The zeros
are stored densely, so these models are no faster than dense on CPU kernels (no speed column here).
Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from lmopt.compress.calibration import calibration_windows
from lmopt.compress.prune import MagnitudeConfig, SparseGPTConfig, WandaConfig, prune
from lmopt.data.text import load_text
from lmopt.evaluate import perplexity
from lmopt.hardware import apply_threads
from lmopt.models import load_model

METHODS = {"magnitude": MagnitudeConfig, "wanda": WandaConfig, "sparsegpt": SparseGPTConfig}
PUBLISHED_LLAMA7B = {"dense": 5.68, ("sparsegpt", "50%"): 7.22, ("wanda", "50%"): 7.26,
                     ("magnitude", "50%"): 17.29, ("sparsegpt", "2:4"): 11.0, ("wanda", "2:4"): 11.5}


def evaluate(model, tokenizer, text, windows, dtype) -> float:
    m = copy.deepcopy(model).to(dtype)
    return round(perplexity(m, tokenizer, text, seq_len=2048, limit=windows)["perplexity"], 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--calib-source", default="pydoc-train")
    ap.add_argument("--patterns", default="50%,2:4", help="Comma list of 50%% (unstructured) and N:M.")
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    ap.add_argument("--eval-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--data-dir", default="/work/shared/data")
    args = ap.parse_args()
    apply_threads()
    dtype = getattr(torch, args.eval_dtype)
    dense = load_model("smollm2-135m-instruct", dtype="float32")
    text = load_text("wikitext2", args.data_dir)
    windows = calibration_windows(dense.tokenizer, args.calib_source, args.calib_samples, args.calib_seq_len)
    rows = [{"method": "dense", "pattern": "-", "ppl": evaluate(dense.model, dense.tokenizer, text,
                                                                 args.windows, dtype)}]
    print(rows[-1], flush=True)
    for pattern in args.patterns.split(","):
        for method in args.methods.split(","):
            fields = {"sparsity": 0.5} if pattern == "50%" else {"pattern": pattern}
            model = copy.deepcopy(dense.model)
            start = time.time()
            report = prune(model, METHODS[method](**fields), calibration=windows)
            seconds = round(time.time() - start, 1)
            row = {"method": method, "pattern": pattern, "sparsity": report["sparsity"], "prune_s": seconds,
                   "ppl": evaluate(model, dense.tokenizer, text, args.windows, dtype),
                   "published_llama7b": PUBLISHED_LLAMA7B.get((method, pattern))}
            row["ppl_vs_dense"] = round(row["ppl"] / rows[0]["ppl"], 3)
            rows.append(row)
            print(row, flush=True)
            del model
    print("| method | pattern | sparsity | WikiText-2 ppl | x dense | prune s | LLaMA-7B (published) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        published = r.get("published_llama7b", 5.68)
        print(f"| {r['method']} | {r['pattern']} | {r.get('sparsity', 0)} | {r['ppl']} | "
              f"{r.get('ppl_vs_dense', 1.0)} | {r.get('prune_s', '-')} | {published} |")
    print(json.dumps({"benchmark": "prune_unstructured", "windows": args.windows, "seq_len": 2048,
                      "eval_dtype": args.eval_dtype, "calibration": f"{args.calib_source} "
                      f"{args.calib_samples}x{args.calib_seq_len}", "rows": rows}))


if __name__ == "__main__":
    main()
