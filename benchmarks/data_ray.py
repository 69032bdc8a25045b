"""Ray engine: documents/s and peak memory with 1 and 2 workers, per-stage costs, equality with local.

Run: flock /tmp/lmopt-speed.lock .venv/bin/python benchmarks/data_ray.py [--docs 20000] [--data-dir ...]

The corpus is `data_throughput.py`'s (PubMedQA abstracts shuffled and 30% edited, plus 5% exact and 5%
lightly edited copies) written as one jsonl file, so the Ray engine cuts it into byte-range shards.
Every filter is on (quality, 13-gram decontamination against four tasks, PII, exact + near dedup).
Each run is a fresh subprocess: the Ray engine on a local cluster of W CPUs (`ray.init(num_cpus=W)`,
workers=W), and the local engine with W workers for reference. Reported per run:
- documents/s of `clean` alone (the cluster is started first, its start-up is reported apart);
- peak resident memory of the driver, of the largest Ray worker and of the whole process tree (sampled
  every 0.2 s with psutil; the object store's shared memory counts in the processes that map it);
- CPU seconds during the run by process class (driver, Ray workers, Ray's own processes), from the
  same samples: what competes with the workers for the cores;
- seconds per stage (decontamination index, shard plan, read + process, candidate edges, connected
  components, verdicts, write) and the
  CPU-microseconds per document of each (seconds x workers / documents): the figures a plan for
  10^8 documents on N machines scales from;
- the candidate graph's size (edges, nodes) that the driver holds.
Both engines' outputs are compared byte for byte. The 2 / 1 worker ratio is the issue's goal (>= 1.6x
on an otherwise idle 2-core machine). Prints a table and one final JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TASKS = ["arc_easy", "boolq", "piqa", "lambada"]


class MemorySampler(threading.Thread):
    """Peak RSS of this process, of each descendant and of the tree's sum, sampled every `period` s."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period, self.stop, self.peak = period, threading.Event(), {"driver": 0, "worker": 0, "tree": 0}
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (class, CPU seconds when last seen)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds by process class (driver, Ray workers, Ray's own processes) over the sampled run."""
        out: dict[str, float] = {}
        for cls, seconds in self.cpu.values():
            out[cls] = round(out.get(cls, 0.0) + seconds, 1)
        return out

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss
                    name = " ".join(proc.cmdline()[:1])
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                cls = "driver" if proc.pid == me.pid else "ray workers" if name.startswith("ray::") else "ray system"
                self.cpu[proc.pid] = (cls, times.user + times.system)
                total += rss
                if proc.pid == me.pid:
                    self.peak["driver"] = max(self.peak["driver"], rss)
                elif name.startswith("ray::"):
                    self.peak["worker"] = max(self.peak["worker"], rss)
            self.peak["tree"] = max(self.peak["tree"], total)
            time.sleep(self.period)


def _timed(module: object, name: str, times: dict[str, float], key: str | None = None) -> None:
    """Wrap `module.name` so its wall time accumulates in `times[key or name]`."""
    fn = getattr(module, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[key or name] = times.get(key or name, 0.0) + time.perf_counter() - started

    setattr(module, name, wrapper)


def one_run(corpus: Path, engine: str, workers: int, data_dir: str, output: Path) -> dict:
    """Clean `corpus` in this process with `engine` and `workers`; time, memory and stage figures."""
    from lmopt.data import clean as clean_module
    from lmopt.data import ray_dedup, ray_engine
    from lmopt.data.clean import clean
    from lmopt.data.config import CleanConfig

    times: dict[str, float] = {}
    graph: dict[str, int] = {}
    sampler = MemorySampler()
    startup = 0.0
    if engine == "ray":
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - started
        _timed(clean_module, "start_report", times, "index")  # the decontamination index, built once
        _timed(ray_engine, "plan_shards", times, "plan")
        _timed(ray_dedup, "_candidate_edges", times, "candidates")
        _timed(ray_dedup, "_components", times, "components")
        _timed(ray_engine, "verdicts", times, "dedup_total")
        _timed(ray_engine, "_write", times, "write")
        components = ray_dedup._components

        def sized(a: object, b: object) -> object:
            nodes, labels = components(a, b)
            graph.update(edges=len(a), nodes=len(nodes), components=int(labels.max()) + 1 if len(labels) else 0)
            return nodes, labels

        ray_dedup._components = sized
    cfg = CleanConfig(engine=engine, workers=workers, pii={"enabled": True}, decontaminate=TASKS)
    sampler.start()
    sampler.join(0.5)  # a first sample: CPU seconds spent before the run are subtracted below
    before = sampler.cpu_seconds()
    started = time.perf_counter()
    result = clean(corpus, cfg, output=output, data_dir=data_dir)
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    docs = result.report.rows_in
    run = {"engine": engine, "workers": workers, "docs": docs, "seconds": round(seconds, 1),
           "docs_per_s": round(docs / seconds, 1), "startup_s": round(startup, 1),
           "kept": result.report.rows_out, "removed": result.report.removed,
           "peak_driver_mb": round(sampler.peak["driver"] / 2**20), "peak_worker_mb":
           round(sampler.peak["worker"] / 2**20), "peak_tree_mb": round(sampler.peak["tree"] / 2**20),
           "output_sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
           "cpu_seconds": {k: round(v - before.get(k, 0.0), 1) for k, v in sampler.cpu_seconds().items()}}
    if engine == "ray":
        other = ("index", "plan", "dedup_total", "write")
        stages = {"index": times.get("index", 0.0), "plan": times.get("plan", 0.0),
                  "read+process": seconds - sum(times.get(k, 0.0) for k in other),
                  "candidates": times.get("candidates", 0.0),
                  "components": times.get("components", 0.0),
                  "verdicts": times.get("dedup_total", 0.0) - times.get("candidates", 0.0)
                  - times.get("components", 0.0), "write": times.get("write", 0.0)}
        run["stage_seconds"] = {k: round(v, 2) for k, v in stages.items()}
        run["stage_cpu_us_per_doc"] = {k: round(v * workers / docs * 1e6, 1) for k, v in stages.items()}
        run["candidate_graph"] = graph
    return run


def spawn(corpus: Path, engine: str, workers: int, data_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--one", str(corpus), engine, str(workers), str(Path(tmp) / "out.jsonl"),
               "--data-dir", data_dir]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LMOPT_QUIET": "1"})
    if out.returncode:
        raise SystemExit(f"{engine} run with {workers} workers failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-local", action="store_true", help="Skip the local-engine reference runs.")
    ap.add_argument("--one", nargs=4, metavar=("CORPUS", "ENGINE", "WORKERS", "OUTPUT"))
    args = ap.parse_args()
    if args.one:
        corpus, engine, workers, output = args.one
        print(json.dumps(one_run(Path(corpus), engine, int(workers), args.data_dir, Path(output))))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data_throughput import make_corpus

    from lmopt.data.load import open_records

    abstracts = [r.text for r in open_records(Path(args.data_dir) / "pubmedqa" / "pubmedqa_abstracts.txt")]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        make_corpus(corpus, abstracts, args.docs, args.seed)
        size_mb = corpus.stat().st_size / 1e6
        runs = [spawn(corpus, "ray", w, args.data_dir) for w in (1, 2)]
        if not args.no_local:
            runs += [spawn(corpus, "local", w, args.data_dir) for w in (1, 2)]
    print(f"corpus: {args.docs} documents, {size_mb:.0f} MB of jsonl")
    print(f"{'engine':>7}{'workers':>8}{'seconds':>9}{'docs/s':>9}{'start s':>8}{'driver MB':>10}"
          f"{'worker MB':>10}{'tree MB':>9}")
    for r in runs:
        print(f"{r['engine']:>7}{r['workers']:>8}{r['seconds']:>9}{r['docs_per_s']:>9}{r['startup_s']:>8}"
              f"{r['peak_driver_mb']:>10}{r['peak_worker_mb']:>10}{r['peak_tree_mb']:>9}")
    for r in runs[:2]:
        print(f"ray, {r['workers']} worker(s): seconds per stage {r['stage_seconds']}")
        print(f"    CPU-us per document {r['stage_cpu_us_per_doc']}; candidate graph {r['candidate_graph']}")
        print(f"    CPU seconds during the run by process class: {r['cpu_seconds']}")
    ratio = runs[1]["docs_per_s"] / runs[0]["docs_per_s"]
    same = len({r["output_sha256"] for r in runs}) == 1
    print(f"ray 2 / 1 worker speed ratio: {ratio:.2f}x; outputs of every run identical: {same}")
    print(json.dumps({"corpus_docs": args.docs, "corpus_mb": round(size_mb), "runs": runs,
                      "ray_speedup_2_workers": round(ratio, 2), "identical_outputs": same}))


if __name__ == "__main__":
    main()
