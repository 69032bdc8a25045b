"""Structured pruning of the embedded model: parameters, size, prefill/decode speed against dense (same
run, interleaved, under the speed lock), WikiText-2 perplexity before and after a short distillation
from the dense model.

    nice -n 10 .venv/bin/python benchmarks/prune_structured.py --windows 20 --recover-minutes 10

Speed runs take /tmp/lmopt-speed.lock themselves (only around the timing), so the slow parts of the
script do not hold other people's measurements up. Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmopt.compress.prune import StructuredConfig, prune, save_pruned
from lmopt.data.text import load_text, pydoc_text
from lmopt.evaluate import benchmark_speed, perplexity
from lmopt.hardware import apply_threads
from lmopt.io import size_on_disk_mb
from lmopt.models import LoadedModel, load_model

TARGETS = {  # 25% and 40% of all parameters (the tied 28M-parameter embedding included); the mixes
    # that lost least before recovery among those tried (BENCHMARKS.md#pruning): heads cost most
    "25%": StructuredConfig(mlp=0.42),
    "40%": StructuredConfig(mlp=0.58, layers=4),
}


@contextlib.contextmanager
def speed_lock():
    with open("/tmp/lmopt-speed.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ppl(model, tokenizer, text, windows, dtype):
    start = time.time()
    m = copy.deepcopy(model).to(dtype)
    result = perplexity(m, tokenizer, text, seq_len=2048, limit=windows)
    return round(result["perplexity"], 3), round(time.time() - start, 1)


def speeds(models: dict, tokenizer, rounds: int, dtype) -> dict:
    """Interleaved rounds (dense, pruned, ...) so load changes hit every model alike; medians."""
    cast = {name: copy.deepcopy(m).to(dtype) for name, m in models.items()}
    runs: dict[str, list[dict]] = {name: [] for name in cast}
    with speed_lock():
        for _ in range(rounds):
            for name, m in cast.items():
                runs[name].append(benchmark_speed(m, tokenizer, prefill_len=512, new_tokens=32,
                                                  batch_sizes=(1,), repeats=3))
    keys = ("prefill_tokens_per_s", "decode_tokens_per_s_bs1")
    return {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}


def recovery_texts(data_dir: str, n_alpaca: int) -> list[str]:
    """Generic English + technical text, disjoint from WikiText-2: Alpaca answers and Python's docs."""
    rows = json.loads((Path(data_dir) / "alpaca" / "alpaca_5000.json").read_text())[:n_alpaca]
    texts = ["\n\n".join(p for p in (r["instruction"], r.get("input", ""), r["output"]) if p) for r in rows]
    docs = pydoc_text("train")
    return texts + [docs[i:i + 4000] for i in range(0, len(docs), 4000)]


def recover(dense: LoadedModel, model, minutes: float, seq_len: int, data_dir: str):
    from lmopt.train import DistillConfig, distill

    student = LoadedModel(model, dense.tokenizer, "pruned")
    config = DistillConfig(max_minutes=minutes, seq_len=seq_len, batch_size=4, lr=1e-4, warmup_steps=5,
                           alpha=0.2, temperature=1.0, loss="forward_kl", epochs=1, val_fraction=0.02,
                           max_val_batches=4, mixed_precision="bf16", log_every=20)
    result = distill(dense, student, recovery_texts(data_dir, 5000), config)
    return result.model.model, result.metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--recover-minutes", type=float, default=10.0)
    ap.add_argument("--recover-seq-len", type=int, default=256)
    ap.add_argument("--speed-rounds", type=int, default=2, help="0 = no speed measurement.")
    ap.add_argument("--targets", default="25%,40%", help="Which of the TARGETS rows to build.")
    ap.add_argument("--data-dir", default="/work/shared/data")
    ap.add_argument("--out", default=None, help="Keep the pruned models here (default: a temp dir).")
    args = ap.parse_args()
    apply_threads()
    dense = load_model("smollm2-135m-instruct", dtype="float32")
    text = load_text("wikitext2", args.data_dir)
    out = Path(args.out or tempfile.mkdtemp(prefix="prune-bench-"))
    bf16 = torch.bfloat16
    rows = {"dense": {"parameters": sum(p.numel() for p in dense.model.parameters()),
                      "size_mb": size_on_disk_mb(dense.path)}}
    pruned = {}
    for name in args.targets.split(","):
        config = TARGETS[name]
        config.calibration.n_samples = args.calib_samples
        model = copy.deepcopy(dense.model)
        start = time.time()
        report = prune(model, config, tokenizer=dense.tokenizer)
        path = save_pruned(LoadedModel(model, dense.tokenizer, dense.ref, dense.path, dense.card),
                           out / f"structured-{name[:-1]}", config, report)
        pruned[name] = model
        rows[name] = {"parameters": report["parameters_after"],
                      "removed": report["parameters_removed_fraction"],
                      "size_mb": size_on_disk_mb(path), "prune_s": round(time.time() - start, 1),
                      "layers": report["layers_after"], "heads": report["heads"][1],
                      "intermediate": report["intermediate"][1],
                      "removed_layers": report.get("removed_layers")}
        print(name, rows[name], flush=True)
    speed = speeds({"dense": dense.model, **pruned}, dense.tokenizer, args.speed_rounds, bf16) \
        if args.speed_rounds else {}
    for name, s in speed.items():
        rows[name].update(s)
        base = speed["dense"]
        rows[name]["prefill_x"] = round(s["prefill_tokens_per_s"] / base["prefill_tokens_per_s"], 3)
        rows[name]["decode_x"] = round(s["decode_tokens_per_s_bs1"] / base["decode_tokens_per_s_bs1"], 3)
    print("speed", json.dumps(speed), flush=True)
    rows["dense"]["ppl"], _ = ppl(dense.model, dense.tokenizer, text, args.windows, bf16)
    print("dense ppl", rows["dense"]["ppl"], flush=True)
    for name, model in pruned.items():
        rows[name]["ppl_pruned"], _ = ppl(model, dense.tokenizer, text, args.windows, bf16)
        print(name, "pruned ppl", rows[name]["ppl_pruned"], flush=True)
        if args.recover_minutes > 0:
            start = time.time()
            model, metrics = recover(dense, model, args.recover_minutes, args.recover_seq_len,
                                     args.data_dir)
            rows[name]["recover_s"] = round(time.time() - start, 1)
            rows[name]["recover_tokens"] = metrics.get("tokens")
            rows[name]["recover_steps"] = metrics.get("steps")
            rows[name]["ppl_recovered"], _ = ppl(model, dense.tokenizer, text, args.windows, bf16)
            rows[name]["ppl_vs_dense"] = round(rows[name]["ppl_recovered"] / rows["dense"]["ppl"], 3)
            save_pruned(LoadedModel(model, dense.tokenizer, dense.ref, dense.path, dense.card),
                        out / f"structured-{name[:-1]}-recovered", TARGETS[name], {"recovery": metrics})
            print(name, "recovered", rows[name], json.dumps(metrics, default=str)[:400], flush=True)
    cols = ["parameters", "removed", "size_mb", "layers", "heads", "intermediate", "prefill_tokens_per_s",
            "prefill_x", "decode_tokens_per_s_bs1", "decode_x", "ppl", "ppl_pruned", "ppl_recovered",
            "ppl_vs_dense"]
    print("| model | " + " | ".join(cols) + " |")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    print(json.dumps({"benchmark": "prune_structured", "windows": args.windows, "seq_len": 2048,
                      "eval_dtype": "bfloat16", "speed_dtype": "bfloat16", "out": str(out), "rows": rows}))


if __name__ == "__main__":
    main()
