"""Architecture selection on BoolQ: an encoder with a trained head against decoders zero-shot and LoRA-tuned.

Run: .venv/bin/python benchmarks/select_boolq.py [--data-dir ../shared/data] [--eval-limit N]
     [--candidate MODEL:WAY ...] [--constraints "latency_p50_ms<=200"] [--threads 1] [--out DIR]

Data: the shared BoolQ file (3,270 rows, the dev set): the first 2,000 rows train (the probe's logistic
regression, LoRA), the other 1,270 evaluate (`--eval-limit` takes the first N of them for a short run).
`--task pubmedqa`: PubMedQA's 1,000 labelled questions (yes / no / maybe; contexts + question in the same
prompt layout), the first 500 train, the other 500 evaluate.
`--task alpaca`: generation on the shared Alpaca sample (5,000 instruction rows): the first 4,000 train,
the first 300 of the other 1,000 evaluate (reference NLL per token, the objective); decoders only.
A stopped run resumes from the candidates it finished when `--out` is given (select.rows.json).
Candidates by default: all-MiniLM-L6-v2 with a linear probe on mean-pooled embeddings and by similarity to
each label's centroid, SmolLM2-135M-Instruct
zero-shot (" no" / " yes" scored after "Passage ... Question ...?\nAnswer:", as lm-evaluation-harness
scores BoolQ) and after LoRA on prompt -> label chat rows, Gemma-3-270M (base) zero-shot. Prints the
table (Markdown), the majority-class baseline, the load average before and after, and one JSON line.
Goal (issue 15): the table side by side, the recommendation following from it and the constraints.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from lmopt.select.selection import select
from lmopt.select.selection_config import SelectConfig
from lmopt.select.selection_data import load_task_data

DEFAULT = ["all-minilm-l6-v2:probe", "all-minilm-l6-v2:similarity", "smollm2-135m-instruct:zero-shot",
           "smollm2-135m-instruct:lora", "gemma-3-270m:zero-shot"]
DECODERS = ["smollm2-135m-instruct:zero-shot", "smollm2-135m-instruct:lora", "gemma-3-270m:zero-shot"]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pubmedqa_rows(data_dir: Path, out: Path) -> Path:
    """PubMedQA's 1,000 expert-labelled questions (`ori_pqal.json`) as classify rows: the abstract's
    contexts and the question in BoolQ's prompt layout, labelled yes / no / maybe."""
    items = json.loads((data_dir / "pubmedqa" / "ori_pqal.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pubmedqa_pqal.jsonl"
    with path.open("w") as f:
        for item in items.values():
            passage = " ".join(item["CONTEXTS"])
            text = f"Passage: {passage}\nQuestion: {item['QUESTION']}\nAnswer:"
            f.write(json.dumps({"text": text, "label": item["final_decision"]}) + "\n")
    return path


def alpaca_rows(data_dir: Path, out: Path) -> Path:
    """The shared Alpaca sample (a JSON array) as JSONL instruction / input / output rows."""
    items = json.loads((data_dir / "alpaca" / "alpaca_5000.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "alpaca_5000.jsonl"
    path.write_text("".join(json.dumps({k: item[k] for k in ("instruction", "input", "output")}) + "\n"
                            for item in items))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N held-out rows")
    parser.add_argument("--task", choices=["boolq", "pubmedqa", "alpaca"], default="boolq")
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N of the 2,000 (500)")
    parser.add_argument("--candidate", action="append", default=None, help="MODEL:WAY (repeatable)")
    parser.add_argument("--constraints", default="")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--out", default=None, help="directory for select.json / select.md")
    args = parser.parse_args()

    task_type, candidates, eval_limit = "classify", args.candidate or DEFAULT, args.eval_limit
    if args.task == "pubmedqa":
        path, train_rows = pubmedqa_rows(Path(args.data_dir), Path(args.out or tempfile.mkdtemp())), 500
    elif args.task == "alpaca":
        path, train_rows = alpaca_rows(Path(args.data_dir), Path(args.out or tempfile.mkdtemp())), 4000
        task_type, candidates, eval_limit = "generate", args.candidate or DECODERS, eval_limit or 300
    else:
        path, train_rows = Path(args.data_dir) / "boolq" / "boolq.jsonl", 2000
    config = SelectConfig(task_type=task_type, candidates=candidates, data=str(path),
                          train_rows=train_rows, train_limit=args.train_limit, eval_limit=eval_limit,
                          constraints=args.constraints, threads=args.threads, batch_size=args.batch_size,
                          train_steps=args.train_steps, max_length=512, output=args.out)
    data = load_task_data(task_type, str(path), None, train_rows, args.train_limit, eval_limit)
    label, count = Counter(e.target for e in data.eval).most_common(1)[0]
    baseline = round(count / len(data.eval), 4) if task_type == "classify" else None
    before, start = loadavg(), time.time()
    result = select(config=config, data=data, log=print)
    after = loadavg()
    print(result.markdown())
    shown = f"majority class '{label}' = {baseline:.3f}; " if baseline is not None else ""
    print(f"eval items: {len(data.eval)}, train items: {len(data.train)}; {shown}"
          f"load average before {before}, after {after}; "
          f"{time.time() - start:.0f} s")
    print(json.dumps({"rows": result.rows, "recommended": result.recommended, "front": result.front,
                      "majority_baseline": baseline, "loadavg_before": before,
                      "loadavg_after": after}))


if __name__ == "__main__":
    main()
