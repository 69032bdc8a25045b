"""End-to-end monitoring scenario (issue 14, item 7): serve, rate, drift, improve, gate.

1. The model (@production: by default an RTN W8 copy of the embedded SmolLM2-135M, so the loop has a
   compression step to replay) is served by lmopt's server with traffic recording and the drift
   monitor beside it (`lmopt.monitor.drift_monitor`, publishing to the server's /metrics).
2. A reference phase of PubMedQA questions becomes the drift reference (a `range:` traffic window).
3. Simulated users send a stream of PubMedQA questions and rate a share of the answers against the
   reference long answers (token F1 >= `--f1` -> +1, else -1 with the reference as a correction half
   the time). False alarms: alerts over this in-distribution stream (`--null` requests).
4. The topic shifts to Python questions (sentences of Python's docs, asked as yes/no questions);
   requests until the first alert are counted.
5. `improve` runs on the ratings of the PubMed stream: suite = perplexity on held-out PubMedQA
   question+answer texts (must improve beyond its interval) and arc_easy (must not drop).
6. The gate checks a deliberately bad candidate (RTN W3 of the float model) against production.

    .venv/bin/python benchmarks/monitor_scenario.py --json /tmp/monitor.json      # full: not timed, 1 h+
    .venv/bin/python benchmarks/monitor_scenario.py --scale tiny                   # smoke test, tiny model
    .venv/bin/python benchmarks/monitor_scenario.py --no-serve --seeds 5           # drift calibration only:
        prompts recorded straight into the store, reference answers as responses; no model, ~1 minute
    .venv/bin/python benchmarks/monitor_scenario.py --drift-only --null 600        # steps 1-4 only (served)
    .venv/bin/python benchmarks/monitor_scenario.py --null 400                     # every step, ~20 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

os.environ.setdefault("LMOPT_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(os.environ.get("LMOPT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
SCALES = {  # requests per phase, drift window, check period, feedback share, training
    "full": {"reference": 400, "null": 2000, "shift": 300, "window": 200, "every": 20, "max_tokens": 48,
             "train": {"seq_len": 256}, "windows": 24, "arc": 200},
    "tiny": {"reference": 60, "null": 120, "shift": 60, "window": 40, "every": 10, "max_tokens": 8,
             "train": {"max_steps": 2, "batch_size": 2, "seq_len": 64}, "windows": 4, "arc": 0},
}


# ---- data --------------------------------------------------------------------------------------
def pubmed_rows() -> list[dict[str, str]]:
    """PubMedQA-L questions with their long answers (1,000 rows)."""
    items = json.loads((DATA / "pubmedqa" / "ori_pqal.json").read_text())
    return [{"prompt": v["QUESTION"], "reference": v["LONG_ANSWER"]} for _, v in sorted(items.items())]


def python_rows() -> list[dict[str, str]]:
    """Yes/no questions from the first sentence of prose paragraphs of Python's docs (the paragraph is
    the reference answer): the shifted topic."""
    templates = ["Is it true that {s}?", "In Python, {s}. Is that right?", "Can you confirm that {s}?",
                 "Python question: {s}?"]
    rng, rows = random.Random(0), []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            text = " ".join(para.split())
            if para.startswith(" ") or "\n   " in para or not 10 <= len(text.split()) <= 120:
                continue  # code blocks and headings
            sentence = re.split(r"(?<=[.;:])\s", text)[0].rstrip(".:;")
            if len(sentence.split()) >= 6:
                rows.append({"prompt": rng.choice(templates).format(s=sentence[0].lower() + sentence[1:]),
                             "reference": text})
    return rows


def splits(seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """Disjoint PubMed question sets: drift reference, stream pool, held-out (suite); Python rows."""
    rows = pubmed_rows()
    random.Random(seed).shuffle(rows)
    return {"reference": rows[:400], "pool": rows[400:800], "heldout": rows[800:], "python": python_rows()}


def heldout_file(rows: list[dict[str, str]], path: Path) -> Path:
    path.write_text("\n\n".join(f"Question: {r['prompt']}\nAnswer: {r['reference']}" for r in rows) + "\n")
    return path


# ---- simulated users -----------------------------------------------------------------------------
def token_f1(answer: str, reference: str) -> float:
    a, b = re.findall(r"\w+", answer.lower()), re.findall(r"\w+", reference.lower())
    common = sum(min(a.count(w), b.count(w)) for w in set(a))
    return 0.0 if not common else 2 * common / (len(a) + len(b))


def user_feedback(answer: str, row: dict[str, str], rng: random.Random, f1: float) -> dict[str, Any]:
    if token_f1(answer, " ".join(row["reference"].split()[:60])) >= f1:
        return {"rating": 1.0}
    return {"rating": -1.0, **({"correction": row["reference"]} if rng.random() < 0.5 else {})}


class Driver:
    """Sends requests (served, or recorded straight into the store with `--no-serve`) and feedback."""

    def __init__(self, store: Any, url: str | None, args: argparse.Namespace, max_tokens: int, seed: int) -> None:
        self.store, self.url, self.args, self.max_tokens = store, url, args, max_tokens
        self.rng, self.sent = random.Random(seed), 0

    def _one(self, row: dict[str, str], rate: bool) -> None:
        import httpx

        from lmopt.serve.telemetry import FeedbackRecord, TrafficRecord

        if self.url is None:  # calibration: no model, the reference answer stands in for the response
            rid = f"cmpl-{self.sent}-{self.rng.random():.9f}"
            answer = " ".join(row["reference"].split()[:self.max_tokens])
            self.store.record(TrafficRecord(rid, "chat.completions", "none", None, row["prompt"], None, answer,
                                            len(row["prompt"].split()), len(answer.split()), "stop", False,
                                            0.0, 0.0, time.time()))
        else:
            body = {"model": "m", "messages": [{"role": "user", "content": row["prompt"]}],
                    "max_tokens": self.max_tokens, "temperature": 0}
            reply = httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=600).raise_for_status().json()
            rid, answer = reply["id"], reply["choices"][0]["message"]["content"]
        if rate:
            feedback = user_feedback(answer, row, self.rng, self.args.f1)
            if self.url is None:
                self.store.flush()
                self.store.add_feedback(FeedbackRecord(rid, feedback["rating"], feedback.get("correction"), None,
                                                       time.time()))
            else:
                httpx.post(f"{self.url}/v1/feedback", json={"response_id": rid, **feedback}, timeout=60)

    def send(self, rows: list[dict[str, str]], rate_share: float) -> None:
        rates = [self.rng.random() < rate_share for _ in rows]
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            list(pool.map(self._one, rows, rates))
        self.sent += len(rows)
        self.store.flush()


def stream(driver: Driver, monitor: Any, rows: list[dict[str, str]], every: int, rate_share: float,
           stop_at_alert: bool) -> dict[str, Any]:
    """Send `rows` in batches of `every`, checking drift after each; alerts and the first alert's position."""
    alerts, first, peak = [], None, {}
    for start in range(0, len(rows), every):
        driver.send(rows[start:start + every], rate_share)
        report = monitor.check(force=True)
        for name, value in report.values().items():  # the largest value seen: the margin to the threshold
            peak[name] = round(max(peak.get(name, value), value), 4)
        if report.alerts:
            alerts.append({"after": start + every, "metrics": [m.name for m in report.alerts]})
            first = first or start + every
            if stop_at_alert:
                break
    return {"requests": min(len(rows), start + every), "alerts": alerts, "first_alert_after": first, "peak": peak}


# ---- the phases ----------------------------------------------------------------------------------
def drift_phases(driver: Driver, store: Any, data: dict, scale: dict, seed: int, registry: Any = None,
                 publish: Any = None) -> dict[str, Any]:
    from lmopt.monitor.drift import DriftConfig
    from lmopt.monitor.drift_monitor import DriftMonitor, DriftMonitorConfig

    rng = random.Random(seed)
    t0 = time.time()
    driver.send(rng.sample(data["reference"], scale["reference"]), rate_share=driver.args.rate_share)
    config = DriftMonitorConfig(reference=f"range:{t0}..{time.time()}", window=scale["window"],
                                every_requests=scale["every"],  # the default thresholds; tiny windows allowed
                                drift=DriftConfig(min_requests=min(50, scale["window"] // 2)))
    monitor = DriftMonitor(store, config, registry=registry, publish=publish)
    t_null = time.time()
    null = stream(driver, monitor, [rng.choice(data["pool"]) for _ in range(scale["null"])], scale["every"],
                  driver.args.rate_share, stop_at_alert=False)
    t_shift = time.time()
    shift = stream(driver, monitor, [rng.choice(data["python"]) for _ in range(scale["shift"])], scale["every"],
                   driver.args.rate_share, stop_at_alert=True)
    return {"null": null, "shift": shift, "feedback_window": f"range:{t_null}..{t_shift}",
            "reference_requests": scale["reference"], "window": scale["window"], "every": scale["every"]}


def make_production(model: str, root: Path, registry: Any, float_production: bool,
                    bad: bool = True) -> dict[str, str]:
    """@production (RTN W8 of `model`, or `model` itself) and a bad candidate (RTN W3 of `model`)."""
    from lmopt.models.load import resolve
    from lmopt.monitor import promote, register_model
    from lmopt.pipeline import one_step_recipe, run_recipe

    def quantize(bits: int) -> str:
        recipe = one_step_recipe("quantize", {"method": "rtn", "bits": bits, "group_size": 32}, model,
                                 workdir=str(root / "steps"))
        return run_recipe(recipe, root, log=lambda m: None)["output"]

    source = str(resolve(model))
    production = source if float_production else quantize(8)
    register_model(production, registry)
    promote(production, "production", registry, reason="monitor scenario")
    return {"production": production, **({"bad": quantize(3)} if bad else {})}


def suite_file(root: Path, heldout: Path, scale: dict) -> Path:
    import yaml

    suite = {"name": "pubmed-domain", "perplexity": [{"source": str(heldout), "windows": scale["windows"],
                                                       "seq_len": 256 if scale["arc"] else 64,
                                                       "max_increase": 0.05}]}
    if scale["arc"]:
        suite["tasks"] = [{"task": "arc_easy", "limit": scale["arc"], "max_drop": 0.05}]
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def improve_phase(store: Any, registry: Any, window: str, suite: Path, scale: dict, root: Path) -> dict[str, Any]:
    from lmopt.cli.monitoring import run_recipe_map
    from lmopt.monitor.config import ImproveConfig, default_finetune
    from lmopt.monitor.improve import improve

    # improve's own fine-tuning defaults (LoRA r 16, lr 2e-4, 2 epochs over the feedback rows), no
    # validation split or checkpoints (a few dozen rows), the scale's sequence length and step cap
    train = {**default_finetune().to_dict(), "val_fraction": 0.0, "save_every": None, **scale["train"]}
    config = ImproveConfig(feedback=window, suite=str(suite), min_rows=4, finetune=train, workdir=str(root / "improve"),
                           require_better=["perplexity/heldout.txt"],
                           data_dir=str(DATA) if DATA.is_dir() else None)
    started = time.time()
    report = improve(config, run=run_recipe_map, registry=registry, traffic=store, log=print)
    metrics = {m["name"]: m for m in (report.gate or {}).get("metrics", [])}
    return {"promoted": report.promoted, "reason": report.reason, "feedback": report.plan.feedback,
            "suite_before_after": {k: {"before": m["baseline"], "after": m["candidate"], "change": m["estimate"],
                                       "interval": [m["low"], m["high"]], "verdict": m["verdict"]}
                                   for k, m in metrics.items()},
            "replayed": [next(iter(s)) for s in report.plan.replay], "seconds": round(time.time() - started, 1)}


def bad_candidate_phase(bad: str, suite: Path, registry: Any) -> dict[str, Any]:
    from lmopt.monitor.gate import check

    report = check(bad, "@production", suite, registry=registry, data_dir=DATA if DATA.is_dir() else None)
    return {"passed": report.passed, "failed": report.failed,
            "metrics": {m.name: {"estimate": m.estimate, "interval": [m.low, m.high], "verdict": m.verdict}
                        for m in report.metrics}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lmopt.monitor import Registry, enable_alias_references
    from lmopt.monitor.traffic import TrafficStore

    torch.set_num_threads(args.threads)
    scale, data = dict(SCALES[args.scale]), splits(args.seed)
    if args.null is not None:
        scale["null"] = args.null
    if args.train_steps is not None:
        scale["train"] = {**scale["train"], "max_steps": args.train_steps}
    root = Path(tempfile.mkdtemp(prefix="lmopt-monitor-scenario-"))
    registry = Registry(f"sqlite:///{root / 'registry.db'}")
    enable_alias_references(registry.url)
    result: dict[str, Any] = {"scale": args.scale, "seed": args.seed, "workdir": str(root)}
    if args.no_serve:
        result["drift"] = []
        for seed in range(args.seed, args.seed + args.seeds):
            store = TrafficStore(f"sqlite:///{root / f'traffic-{seed}.db'}")
            driver = Driver(store, None, args, scale["max_tokens"], seed)
            result["drift"].append(drift_phases(driver, store, data, scale, seed))
            store.close()
        return result
    from lmopt.models import save_tiny_llama
    from lmopt.serve.config import EngineConfig, ServerConfig
    from lmopt.serve.server import BackgroundServer, build_app

    model = args.model or (str(save_tiny_llama(root / "tiny")) if args.scale == "tiny" else "smollm2-135m-instruct")
    models = make_production(model, root, registry, args.float_production, bad=not args.drift_only)
    store = TrafficStore(f"sqlite:///{root / 'traffic.db'}")
    started = time.time()
    engine = EngineConfig(max_batch=args.concurrency, max_model_len=1024, threads=args.threads)
    app = build_app(models["production"], engine, ServerConfig(port=0, model_name="m"), traffic=store)
    with BackgroundServer(app) as server:
        driver = Driver(store, server.url, args, scale["max_tokens"], args.seed)
        result["drift"] = drift_phases(driver, store, data, scale, args.seed, registry,
                                       publish=app.state.telemetry.set_drift)
        import httpx

        result["drift"]["prometheus"] = [line for line in httpx.get(server.url + "/metrics").text.splitlines()
                                         if line.startswith("lmopt_drift")]
    result["drift"]["serve_seconds"] = round(time.time() - started, 1)
    if args.drift_only:
        store.close()
        return result
    suite = suite_file(root, heldout_file(data["heldout"], root / "heldout.txt"), scale)
    result["improve"] = improve_phase(store, registry, result["drift"]["feedback_window"], suite, scale, root)
    result["bad_candidate"] = bad_candidate_phase(models["bad"], suite, registry)
    store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--model", default=None, help="Model to serve (default: embedded; tiny: a random one).")
    parser.add_argument("--float-production", action="store_true", help="Serve the float model (no replay).")
    parser.add_argument("--no-serve", action="store_true", help="Drift calibration only (see the docstring).")
    parser.add_argument("--seeds", type=int, default=1, help="Streams to simulate with --no-serve.")
    parser.add_argument("--drift-only", action="store_true", help="Serve and check drift; no improve, no gate.")
    parser.add_argument("--null", type=int, default=None, help="In-distribution requests (default: the scale's).")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="Cap on improve's LoRA steps (default: its 2 epochs over the feedback rows).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate-share", type=float, default=0.3, help="Share of answers users rate.")
    parser.add_argument("--f1", type=float, default=0.2, help="Token F1 against the reference for a +1.")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (DATA / "pubmedqa" / "ori_pqal.json").exists():
        sys.exit(f"needs {DATA}/pubmedqa (set LMOPT_DATA_DIR)")
    result = run(args)
    text = json.dumps(result, default=str)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
