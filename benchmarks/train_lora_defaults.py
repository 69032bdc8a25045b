"""The issue-13 LoRA case through the CLI with default settings: held-out perplexity and peak memory.

    lmopt train smollm2-135m-instruct --data TRAIN.txt --format text --lora --max-steps 40 \
        --eval TEST.txt --eval-limit W -o OUT --json SUMMARY.json

Split as in benchmarks/train_domain.py: the 1000 PubMedQA abstracts in file order, the first 900 the
training data (TRAIN.txt), the last 100 held out (TEST.txt, never trained on). Every training setting
is lmopt's default (batch 4 x 512, LoRA r 8, the LoRA learning rate, the memory budget). The `--eval`
of the step measures the held-out perplexity (fp32 evaluation, non-overlapping 512-token windows) on
the model before and after, in the same process; peak RSS is the training process's high-water mark
(VmHWM, model load included).

    .venv/bin/python benchmarks/train_lora_defaults.py [--windows 16] [--steps 40]
Prints the command, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--extra", nargs="*", default=[], help="extra CLI flags (not the defaults)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the trained model here (a directory)")
    args = parser.parse_args()
    from lmopt.hardware import detect_hardware
    from lmopt.settings import default_data_dir

    docs = [d.strip() for d in (default_data_dir() / "pubmedqa" / "pubmedqa_abstracts.txt").read_text()
            .split("\n\n") if d.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "TRAIN.txt").write_text("\n\n".join(docs[:-100]))
        (root / "TEST.txt").write_text("\n\n".join(docs[-100:]))
        command = [sys.executable, "-m", "lmopt", "train", args.model, "--data", str(root / "TRAIN.txt"),
                   "--format", "text", "--lora", "--max-steps", str(args.steps), "--eval", str(root / "TEST.txt"),
                   "--eval-limit", str(args.windows), "-o", str(root / "out"), "--json", str(root / "summary.json"),
                   "--workdir", str(root / "steps"), "--registry", f"sqlite:///{root / 'runs.db'}", *args.extra]
        print(" ".join(command[2:]), flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        summary = json.loads((root / "summary.json").read_text())
        if args.keep is not None:
            shutil.copytree(root / "out", args.keep, dirs_exist_ok=True)
    print(json.dumps({"benchmark": "train_lora_defaults", "cpu": detect_hardware().cpu, "isa": detect_hardware().isa,
                      "wall_s": round(wall, 1), "loadavg": Path("/proc/loadavg").read_text().split()[:3],
                      "summary": summary}), flush=True)


if __name__ == "__main__":
    main()
