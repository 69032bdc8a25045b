"""Issue 14's gate and telemetry goals on the embedded model, through the `lmopt` CLI itself.

Parts (run each under the CPU lock: quality checks shared, timed ones exclusive):
- make:      the three candidates of the gate goal with the CLI: RTN W3 and RTN W8 (`lmopt quantize
             --method rtn --bits 3|8`, default group sizes) and 50% magnitude pruning (`lmopt prune
             --method magnitude --sparsity 0.5`). Existing outputs are kept.
- gate:      `lmopt check CANDIDATE --baseline smollm2-135m-instruct --suite quick` for each run named
             in `--runs` (w3, w8, prune50, self; `self` = the embedded model against itself): exit code,
             wall seconds, load average before/after, every metric's estimate, interval and verdict.
- telemetry: output tokens/s of `lmopt serve` at concurrency 16 with telemetry off and on (`--traffic`,
             every request recorded, PII scrubbing on: the defaults), same prompts; `--on-flags` adds
             flags to the "on" server, `--control` runs it without telemetry (an A/A check). Both servers run
             side by side (the idle one waits on its queue, its CPU time is reported) and the load
             alternates off, on, on, off, ... so a slow stretch of the machine hits both arms. Besides
             tokens/s, each run reports the serving process's CPU milliseconds per output token: on a
             CPU-bound server, telemetry's extra CPU per token bounds what it costs in throughput.

    flock -s /tmp/lmopt-cpu.lock .venv/bin/python benchmarks/monitor_gate.py make
    flock -s /tmp/lmopt-cpu.lock .venv/bin/python benchmarks/monitor_gate.py gate --runs w3,prune50,self,self
    flock -x /tmp/lmopt-cpu.lock .venv/bin/python benchmarks/monitor_gate.py gate --runs w8      # timed
    flock -x /tmp/lmopt-cpu.lock .venv/bin/python benchmarks/monitor_gate.py telemetry --rounds 4

Results go to `--work` (default /tmp/lmopt-monitor-gate): per-check JSON/Markdown reports and
`gate-<runs>.json` / `telemetry.json`; a table and one JSON line are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LMOPT_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "smollm2-135m-instruct"
LMOPT = [sys.executable, "-m", "lmopt"]
CANDIDATES = {  # run name -> (output directory name, CLI arguments that make it)
    "w3": ("rtn-w3", ["quantize", MODEL, "--method", "rtn", "--bits", "3"]),
    "w8": ("rtn-w8", ["quantize", MODEL, "--method", "rtn", "--bits", "8"]),
    "prune50": ("magnitude-50", ["prune", MODEL, "--method", "magnitude", "--sparsity", "0.5"]),
}
EXPECTED = {"w3": 1, "w8": 0, "prune50": 1, "self": 0}  # the goal: exit 1 blocks, exit 0 passes


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# ---- make ---------------------------------------------------------------------------------------
def make(work: Path, registry: str) -> dict[str, Any]:
    made = {}
    for name, (dirname, args) in CANDIDATES.items():
        out = work / dirname
        if (out / "lmopt.json").exists() or (out / "config.json").exists():
            made[name] = {"path": str(out), "kept": True}
            continue
        started = time.time()
        proc = subprocess.run([*LMOPT, *args, "-o", str(out), "--workdir", str(work / "steps"),
                               "--registry", registry, "--json", str(work / f"make-{name}.json")])
        made[name] = {"path": str(out), "exit": proc.returncode, "seconds": round(time.time() - started, 1)}
        print(name, made[name], flush=True)
    return made


# ---- gate ---------------------------------------------------------------------------------------
def check(run: str, index: int, work: Path, registry: str, suite: str) -> dict[str, Any]:
    """One `lmopt check` of a candidate (or the embedded model itself) against the embedded model."""
    candidate = MODEL if run == "self" else str(work / CANDIDATES[run][0])
    stem = work / f"check-{run}-{index}-{int(time.time())}"
    command = [*LMOPT, "check", candidate, "--baseline", MODEL, "--suite", suite, "--json", f"{stem}.json",
               "--markdown", f"{stem}.md", "--registry", registry]
    before, started = loadavg(), time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    row: dict[str, Any] = {"run": run, "exit": proc.returncode, "expected_exit": EXPECTED[run],
                           "wall_s": round(wall, 1), "loadavg_before": before, "loadavg_after": loadavg(),
                           "command": " ".join(["lmopt", *command[3:]])}
    if proc.returncode not in (0, 1) or not Path(f"{stem}.json").exists():
        row["stderr"] = proc.stderr[-2000:]
        return row
    report = json.loads(Path(f"{stem}.json").read_text())
    row["report_seconds"] = report["seconds"]
    row["metrics"] = [{k: m[k] for k in ("name", "baseline", "candidate", "compared", "estimate", "low", "high",
                                          "tolerance", "verdict", "n", "unit")} for m in report["metrics"]]
    row["markdown"] = Path(f"{stem}.md").read_text()
    return row


def gate(work: Path, registry: str, runs: list[str], suite: str) -> dict[str, Any]:
    rows = []
    for i, run in enumerate(runs):
        rows.append(check(run, i, work, registry, suite))
        short = {k: rows[-1][k] for k in ("run", "exit", "expected_exit", "wall_s", "loadavg_before",
                                           "loadavg_after")}
        print(short, flush=True)
        for m in rows[-1].get("metrics", []):
            print(f"    {m['name']:32s} {m['estimate']:+.4f} [{m['low']:+.4f}, {m['high']:+.4f}] "
                  f"tol {m['tolerance']} -> {m['verdict']}", flush=True)
        if "stderr" in rows[-1]:
            print(rows[-1]["stderr"], flush=True)
    return {"machine": machine(), "suite": suite, "checks": rows}


# ---- telemetry ----------------------------------------------------------------------------------
class CliServer:
    """`lmopt serve` in a child process (the real CLI, telemetry on or off)."""

    def __init__(self, traffic_url: str | None, max_batch: int, threads: int, log: Path,
                 extra: list[str] | None = None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        flags = ["--traffic", "--traffic-url", traffic_url] if traffic_url else ["--no-traffic"]
        self.command = [*LMOPT, "serve", MODEL, "--port", str(self.port), "--max-batch", str(max_batch),
                        "--threads", str(threads), "--name", "m", *flags, *(extra or [])]
        self.log = log

    def __enter__(self) -> CliServer:
        import httpx

        self.proc = subprocess.Popen(self.command, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server did not come up: {self.log.read_text()[-2000:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> list[str]:
        import httpx

        return [line for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines()
                if line.startswith("lmopt_traffic") or line.startswith("lmopt_feedback")]

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def telemetry(work: Path, rounds: int, requests: int, concurrency: int, threads: int,
              on_flags: list[str], control: bool = False) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from lmopt.models.load import resolve
    from lmopt.serve.bench import LoadConfig, make_workload, run_load

    tokenizer = AutoTokenizer.from_pretrained(str(resolve(MODEL)))
    config = LoadConfig(url="-", concurrency=concurrency, requests=requests, prompt_len=(32, 256),
                        output_len=(16, 64), seed=0)
    jobs = make_workload(config, tokenizer)
    store = Path(tempfile.mkdtemp(prefix="traffic-", dir=work)) / "traffic.db"
    result: dict[str, Any] = {"machine": machine(), "concurrency": concurrency, "requests_per_run": requests,
                              "threads": threads, "on_flags": on_flags, "control": control,
                              "loadavg_start": loadavg(), "runs": []}
    with (CliServer(None, concurrency, threads, work / "serve-off.log") as off,
          CliServer(None if control else f"sqlite:///{store}", concurrency, threads, work / "serve-on.log",
                    on_flags) as on):
        servers = {"off": off, "on": on}
        for srv in servers.values():  # warm-up: first-call allocations, the store's tables
            run_load(LoadConfig(url=srv.url, concurrency=concurrency, requests=concurrency), jobs=jobs[:concurrency])
        order = [arm for r in range(rounds) for arm in (("off", "on") if r % 2 == 0 else ("on", "off"))]
        for arm in order:
            idle = servers["on" if arm == "off" else "off"]
            idle_cpu, busy_cpu = idle.cpu_seconds(), servers[arm].cpu_seconds()
            row = run_load(LoadConfig(url=servers[arm].url, concurrency=concurrency, requests=requests), jobs=jobs)
            # CPU time the serving process spent per output token: telemetry's own work (queue, scrubbing,
            # SQLite writes) shows here directly, without the scheduling noise of a throughput figure.
            cpu = servers[arm].cpu_seconds() - busy_cpu
            row = {"arm": arm, **row, "server_cpu_s": round(cpu, 2),
                   "cpu_ms_per_token": round(1000 * cpu / max(row["output_tokens"], 1), 3),
                   "idle_server_cpu_s": round(idle.cpu_seconds() - idle_cpu, 2), "loadavg": loadavg()}
            result["runs"].append(row)
            print({k: row[k] for k in ("arm", "output_tokens_per_s", "cpu_ms_per_token", "duration_s", "errors",
                                       "idle_server_cpu_s", "loadavg")}, flush=True)
        result["on_metrics"] = on.metrics()
    rates = {arm: [r["output_tokens_per_s"] for r in result["runs"] if r["arm"] == arm] for arm in ("off", "on")}
    # Pairs in running order (off/on, on/off, ...): each ratio compares two neighbouring runs.
    ratios = [on_rate / off_rate for off_rate, on_rate in zip(rates["off"], rates["on"], strict=True)]
    cpu = {arm: [r["cpu_ms_per_token"] for r in result["runs"] if r["arm"] == arm] for arm in ("off", "on")}
    cpu_ratios = [on_ms / off_ms for off_ms, on_ms in zip(cpu["off"], cpu["on"], strict=True)]
    result.update({"cpu_ms_per_token": cpu, "cpu_pair_ratios": [round(r, 4) for r in cpu_ratios],
                   "cpu_ratio_median": round(statistics.median(cpu_ratios), 4),
                   "cpu_ratio_sd": round(statistics.stdev(cpu_ratios), 4) if len(cpu_ratios) > 1 else None})
    result.update({"loadavg_end": loadavg(), "off_tok_s": rates["off"], "on_tok_s": rates["on"],
                   "off_mean": round(statistics.mean(rates["off"]), 2),
                   "on_mean": round(statistics.mean(rates["on"]), 2),
                   "pair_ratios": [round(r, 4) for r in ratios], "ratio_mean": round(statistics.mean(ratios), 4),
                   "ratio_median": round(statistics.median(ratios), 4),
                   "ratio_min": round(min(ratios), 4), "ratio_max": round(max(ratios), 4),
                   "ratio_sd": round(statistics.stdev(ratios), 4) if len(ratios) > 1 else None})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["make", "gate", "telemetry"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmopt-monitor-gate"))
    parser.add_argument("--registry", default=None, help="SQLAlchemy URL (default: a SQLite file in --work).")
    parser.add_argument("--runs", default="w3,w8,prune50,self,self,self,self,self")
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--rounds", type=int, default=4, help="telemetry: off/on pairs")
    parser.add_argument("--requests", type=int, default=64, help="telemetry: requests per run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--control", action="store_true",
                        help='telemetry: A/A control, the "on" server also without telemetry (a second server '
                        'started second: any difference is the position, not telemetry)')
    parser.add_argument("--on-flags", default="", help='telemetry: extra `lmopt serve` flags of the "on" server, '
                        'e.g. "--no-scrub-pii" or "--sample-rate 0.1"')
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    registry = args.registry or f"sqlite:///{args.work / 'registry.db'}"
    if args.part == "make":
        out = make(args.work, registry)
        name = "make"
    elif args.part == "gate":
        runs = args.runs.split(",")
        unknown = [r for r in runs if r not in EXPECTED]
        if unknown:
            sys.exit(f"--runs: unknown {unknown} (choose from {sorted(EXPECTED)})")
        out = gate(args.work, registry, runs, args.suite)
        name = f"gate-{'-'.join(runs)}-{int(time.time())}"
    else:
        out = telemetry(args.work, args.rounds, args.requests, args.concurrency, args.threads, args.on_flags.split(),
                        args.control)
        name = f"telemetry-{int(time.time())}"
    (args.work / f"{name}.json").write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
