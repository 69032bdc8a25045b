"""Cleaning throughput (documents/s) and peak memory on a synthetic 100k-document corpus.

Run: flock /tmp/lmopt-speed.lock .venv/bin/python benchmarks/data_throughput.py [--docs 100000]

The corpus is made from the PubMedQA abstracts: each document is an abstract with its sentences
shuffled and 30% of its words edited (so documents are distinct), plus 5% exact and 5% lightly
edited copies. Every filter is on (quality, 13-gram decontamination against four tasks, PII,
exact + near dedup). Each measurement runs `clean` in a fresh subprocess, so its peak RSS (and
its workers') is its own. The 1-worker vs 2-worker speed ratio is measured side by side on the
same first `--ratio-docs` documents; absolute documents/s depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = ["arc_easy", "boolq", "piqa", "lambada"]


def make_corpus(path: Path, abstracts: list[str], n: int, seed: int) -> None:
    from lmopt.data.planted import near_copy

    rng = random.Random(seed)
    made: list[str] = []
    with path.open("w") as fh:
        for i in range(n):
            r = rng.random()
            if made and r < 0.05:
                text = rng.choice(made[-5000:])
            elif made and r < 0.10:
                text = near_copy(rng.choice(made[-5000:]), rng, 0.02)
            else:
                sentences = rng.choice(abstracts).split(". ")
                rng.shuffle(sentences)
                text = near_copy(". ".join(sentences), rng, 0.3)
                made.append(text)
                if len(made) > 10000:
                    made = made[-5000:]
            fh.write(json.dumps({"text": text, "id": i}) + "\n")


def one_run(corpus: Path, docs: int, workers: int, data_dir: str) -> dict:
    """Clean the first `docs` rows in this process; report time and peak memory (main, workers)."""
    from itertools import islice

    from lmopt.data.clean import clean
    from lmopt.data.config import CleanConfig
    from lmopt.data.load import open_records
    from lmopt.hardware import peak_child_rss_mb, peak_rss_mb

    cfg = CleanConfig(workers=workers, pii={"enabled": True}, decontaminate=TASKS)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        rows = islice(open_records(corpus), docs)
        result = clean(rows, cfg, output=Path(tmp) / "out.jsonl", data_dir=data_dir)
        seconds = time.perf_counter() - started
    own, kids = peak_rss_mb(), peak_child_rss_mb()
    return {"docs": docs, "workers": workers, "seconds": round(seconds, 1),
            "docs_per_s": round(docs / seconds, 1), "kept": result.report.rows_out,
            "removed": result.report.removed, "peak_rss_main_mb": round(own),
            "peak_rss_worker_mb": round(kids)}


def spawn(corpus: Path, docs: int, workers: int, data_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--one", str(corpus), str(docs), str(workers), "--data-dir", data_dir]
    env = {**os.environ, "LMOPT_QUIET": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"run of {docs} docs with {workers} workers failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--ratio-docs", type=int, default=10_000)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", nargs=3, metavar=("CORPUS", "DOCS", "WORKERS"))
    ap.add_argument("--corpus", help="Keep the generated corpus here (reused when it exists).")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(Path(args.one[0]), int(args.one[1]), int(args.one[2]), args.data_dir)))
        return
    from lmopt.data.load import open_records

    abstracts = [r.text for r in open_records(Path(args.data_dir) / "pubmedqa" / "pubmedqa_abstracts.txt")]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(args.corpus) if args.corpus else Path(tmp) / "corpus.jsonl"
        if not corpus.exists():
            make_corpus(corpus, abstracts, args.docs, args.seed)
        size_mb = corpus.stat().st_size / 1e6
        runs = [spawn(corpus, args.ratio_docs, w, args.data_dir) for w in (1, 2)]
        runs += [spawn(corpus, n, 2, args.data_dir) for n in (args.docs // 4, args.docs)]
    print(f"corpus: {args.docs} documents, {size_mb:.0f} MB of jsonl")
    print(f"{'docs':>8}{'workers':>8}{'seconds':>9}{'docs/s':>9}{'kept':>8}{'main MB':>9}{'worker MB':>10}")
    for r in runs:
        print(f"{r['docs']:>8}{r['workers']:>8}{r['seconds']:>9}{r['docs_per_s']:>9}{r['kept']:>8}"
              f"{r['peak_rss_main_mb']:>9}{r['peak_rss_worker_mb']:>10}")
    ratio = runs[1]["docs_per_s"] / runs[0]["docs_per_s"]
    print(f"2 workers / 1 worker speed ratio (same {args.ratio_docs} docs, side by side): {ratio:.2f}x")
    print(json.dumps({"corpus_docs": args.docs, "corpus_mb": round(size_mb), "runs": runs,
                      "speedup_2_workers": round(ratio, 2)}))


if __name__ == "__main__":
    main()
