"""Do the distillation defaults beat plain cross-entropy after a short budget (issue 13, item 5)?

The case of the issue: `lmopt distill --teacher smollm2-135m-instruct --student-layers 15 --data TRAIN.txt
--format text --max-steps 30 --seq-len 256 --batch-size 4`, once with the defaults and once with
`--alpha 1` (plain cross-entropy, no teacher), every other setting the same (the defaults).
Split as in benchmarks/train_domain.py: the 1000 PubMedQA abstracts in file order, the last 100 held out
(never trained on), the first 900 the training data. Held-out perplexity: `lmopt.evaluate.perplexity`
(fp32, non-overlapping 512-token windows, the first `--windows` of them).

    nice -n 10 .venv/bin/python benchmarks/distill_defaults.py               # defaults vs alpha 1
    .venv/bin/python benchmarks/distill_defaults.py --set temperature=2 --set alpha=0   # another arm

`--set key=value` overrides a field in both arms (the candidate defaults being compared); the CE arm
always has alpha 1. Prints one JSON line per arm, then one summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml


def split(path: Path) -> tuple[list[str], str]:
    docs = [d.strip() for d in path.read_text().split("\n\n") if d.strip()]
    return docs[:-100], "\n\n".join(docs[-100:])


def run_arm(teacher, docs: list[str], test: str, overrides: dict, args) -> dict:
    from lmopt.evaluate import perplexity
    from lmopt.train import DistillConfig, distill, student_from_teacher

    config = DistillConfig(
        format="text", max_steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size, **overrides
    )
    student = student_from_teacher(teacher, args.student_layers)
    wall, cpu = time.perf_counter(), time.process_time()
    result = distill(teacher, student, docs, config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ppl = perplexity(result.model.model, result.model.tokenizer, test, 512, args.windows)["perplexity"]
    return {
        "alpha": config.alpha,
        "loss": config.loss,
        "temperature": config.temperature,
        "lr": config.lr,
        "warmup_steps": config.warmup_steps,
        "heldout_ppl": round(ppl, 3),
        "final_eval_loss": result.metrics["final_eval_loss"],
        "steps": result.metrics["steps"],
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        "peak_memory_mb": result.metrics["peak_memory_mb"],
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--student-layers", type=int, default=15)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--arms", default="defaults,ce")
    parser.add_argument("--set", action="append", default=[], help="key=value (YAML value), both arms")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    os.environ.setdefault("LMOPT_QUIET", "1")
    from lmopt.models import load_model
    from lmopt.settings import default_data_dir

    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    docs, test = split(default_data_dir() / "pubmedqa" / "pubmedqa_abstracts.txt")
    teacher = load_model(args.model, dtype="float32")
    rows = {}
    for arm in args.arms.split(","):
        arm_overrides = {**overrides, "alpha": 1.0} if arm == "ce" else overrides
        rows[arm] = run_arm(teacher, docs, test, arm_overrides, args)
        print(json.dumps({"arm": arm, **rows[arm]}), flush=True)
    summary = {"benchmark": "distill_defaults", "steps": args.steps, "windows": args.windows, "set": overrides}
    summary.update({f"{arm}_ppl": row["heldout_ppl"] for arm, row in rows.items()})
    if "defaults" in rows and "ce" in rows:
        summary["distilled_below_ce"] = rows["defaults"]["heldout_ppl"] < rows["ce"]["heldout_ppl"]
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
