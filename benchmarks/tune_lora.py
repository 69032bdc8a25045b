"""Benchmark: does TPE with median pruning find a better LoRA config, sooner, than random search without it?

Task: LoRA domain adaptation of the embedded SmolLM2-135M-Instruct on PubMedQA abstracts, with very
short trials (8 optimizer steps on 2 x 64-token blocks, validated every 2 steps) because the CPU is small and
shared. Each arm gets the same wall-clock budget per seed (trials still running at the deadline are
not counted); arms are interleaved per seed so that load from other processes hits both alike.
Then the best-found configs and the default config are compared on held-out abstracts.

Slices of pubmedqa_abstracts.txt (1000 abstracts separated by blank lines): train = 0..299,
validation (the tuning objective) = 300..339, held-out test = 900..999.

Run:  nice -n 10 .venv/bin/python benchmarks/tune_lora.py --budget 300 --seeds 0 1
      (--smoke: the tiny random model and a 20 s budget, to check the script)
Prints a table per seed, the held-out table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LMOPT_QUIET", "1")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pubmedqa" / "pubmedqa_abstracts.txt"
SPACE = Path(__file__).resolve().parents[1] / "src" / "lmopt" / "recipes" / "tune-lora-pubmed-space.yaml"
ARMS = {"tpe+median": ("tpe", "median"), "random": ("random", "none")}


def write_slices(data: Path, out: Path) -> dict[str, Path]:
    docs = [d.strip() for d in data.read_text().split("\n\n") if d.strip()]
    slices = {"train": docs[:300], "val": docs[300:340], "test": docs[900:1000]}
    out.mkdir(parents=True, exist_ok=True)
    for name, part in slices.items():
        (out / f"{name}.txt").write_text("\n\n".join(part))
    return {name: out / f"{name}.txt" for name in slices}


def base_config(paths: dict[str, Path], smoke: bool) -> dict[str, Any]:
    """The default config: the shipped recipe's LoRA settings, shortened for the CPU."""
    return {"data": str(paths["train"]), "val_data": str(paths["val"]), "format": "text", "method": "lora",
            "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "lr": 1e-4, "weight_decay": 0.0,
            "warmup_ratio": 0.0, "seq_len": 64, "batch_size": 2, "max_steps": 8,
            "eval_every": 2, "max_val_batches": 2, "mixed_precision": "bf16"}


def run_arm(arm: str, seed: int, model: str, base: dict[str, Any], budget: float, out: Path,
            enqueue_base: bool = False, n_trials: int = 1000) -> dict[str, Any]:
    from lmopt.tune import SearchSpace, TuneConfig, TuneJob, run_job

    sampler, pruner = ARMS[arm]
    tune = TuneConfig(n_trials=n_trials, timeout=budget, sampler=sampler, pruner=pruner, seed=seed,
                      startup_trials=2, output=str(out / f"{arm}-s{seed}"), study_name=f"{arm}-s{seed}",
                      enqueue_base=enqueue_base, plots=True)
    job = TuneJob(target="finetune", base=base, space=SearchSpace.from_yaml(SPACE).to_dict(), tune=tune,
                  model=model)
    started = time.time()
    result = run_job(job, log=lambda m: None)
    return {"arm": arm, "seed": seed, "start": started, "result": result}


def curve(run: dict[str, Any], budget: float) -> list[dict[str, Any]]:
    """Best validation loss so far after each trial that finished within the budget."""
    best, steps, points = math.inf, 0, []
    for row in sorted(run["result"].trials, key=lambda r: r["finished"] or math.inf):
        if row["finished"] is None or row["finished"] - run["start"] > budget:
            continue
        steps += row["last_step"] or 0
        if row["state"] == "complete":
            best = min(best, row["values"][0])
        points.append({"t": round(row["finished"] - run["start"], 1), "best": best, "steps": steps,
                       "state": row["state"]})
    return points


def time_to(points: list[dict[str, Any]], target: float) -> float | None:
    return next((p["t"] for p in points if p["best"] <= target + 1e-12), None)


def heldout(model_dir: Path, test: Path, windows: int) -> dict[str, float]:
    """Held-out perplexity (lmopt.evaluate protocol: 128-token windows) of a saved model."""
    from lmopt.evaluate import perplexity
    from lmopt.models import load_model

    loaded = load_model(model_dir, dtype="float32")
    result = perplexity(loaded.model, loaded.tokenizer, test.read_text(), seq_len=128, limit=windows)
    return {"nll": round(result["nll"], 4), "ppl": round(result["perplexity"], 3), "tokens": result["tokens"]}


def seed_table(seed: int, runs: dict[str, dict], budget: float) -> dict[str, Any]:
    curves = {arm: curve(run, budget) for arm, run in runs.items()}
    final = {arm: (pts[-1]["best"] if pts else math.inf) for arm, pts in curves.items()}
    target = final["random"]
    row = {"seed": seed, "curves": curves, "final": final,
           "trials": {a: len(c) for a, c in curves.items()},
           "pruned": {a: sum(p["state"] == "pruned" for p in c) for a, c in curves.items()},
           "steps": {a: (c[-1]["steps"] if c else 0) for a, c in curves.items()},
           "t_random_best": time_to(curves["random"], target),
           "t_tpe_reach": time_to(curves["tpe+median"], target)}
    print(f"\nseed {seed}  (budget {budget:.0f} s)")
    print(f"{'arm':<12} {'trials':>6} {'pruned':>6} {'steps':>6} {'best val loss':>14}  "
          "best-so-far (t s: loss)")
    for arm, pts in curves.items():
        trace = ", ".join(f"{p['t']:.0f}:{p['best']:.4f}" for p in pts if p["best"] < math.inf)
        print(f"{arm:<12} {row['trials'][arm]:>6} {row['pruned'][arm]:>6} {row['steps'][arm]:>6} "
              f"{final[arm]:>14.4f}  {trace}")
    print(f"time for random to reach its best {target:.4f}: {row['t_random_best']} s; "
          f"for tpe+median to reach it: {row['t_tpe_reach']} s")
    return row


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        for arm, color in (("tpe+median", "tab:blue"), ("random", "tab:orange")):
            pts = [p for p in row["curves"][arm] if p["best"] < math.inf]
            ax.step([p["t"] for p in pts], [p["best"] for p in pts], where="post", color=color,
                    alpha=0.8, label=f"{arm} seed {row['seed']}",
                    linestyle="-" if row["seed"] % 2 == 0 else "--")
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("best validation loss so far")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="Wall-clock seconds per arm and seed.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("/tmp/lmopt-tune-bench"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--windows", type=int, default=40, help="Held-out 128-token windows.")
    parser.add_argument("--plot", type=Path, default=None, help="Save the best-so-far curves here (PNG).")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    model = "smollm2-135m-instruct"
    if args.smoke:
        from lmopt.models import save_tiny_llama

        model = str(save_tiny_llama(args.out / "tiny"))
        args.budget, args.windows = min(args.budget, 20.0), 4
    paths = write_slices(args.data, args.out / "data")
    base = base_config(paths, args.smoke)
    started = time.time()
    default = run_arm("random", 99, model, base, budget=1e6, out=args.out / "default", enqueue_base=True,
                      n_trials=1)
    rows, bests = [], {}
    for seed in args.seeds:
        runs = {arm: run_arm(arm, seed, model, base, args.budget, args.out) for arm in ARMS}
        rows.append(seed_table(seed, runs, args.budget))
        for arm, run in runs.items():
            bests[f"{arm} seed {seed}"] = run["result"]
    print("\nheld-out abstracts 900-999, perplexity over 128-token windows")
    print(f"{'model':<22} {'val loss':>9} {'held-out nll':>13} {'held-out ppl':>13}  config")
    table = {}
    for name, result in [("default config", default["result"]), *bests.items()]:
        held = heldout(result.best_model, paths["test"], args.windows) if result.best_model else {}
        table[name] = {"val_loss": result.best_values[0] if result.best_values else None, **held,
                       "params": result.best_params}
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in result.best_params.items())
        print(f"{name:<22} {table[name]['val_loss']:>9.4f} {held.get('nll', math.nan):>13.4f} "
              f"{held.get('ppl', math.nan):>13.3f}  {params}")
    if args.plot:
        plot(rows, args.plot)
    summary = {"bench": "tune_lora", "budget_s": args.budget, "seeds": args.seeds, "smoke": args.smoke,
               "final_best": {r["seed"]: r["final"] for r in rows},
               "trials": {r["seed"]: r["trials"] for r in rows},
               "pruned": {r["seed"]: r["pruned"] for r in rows},
               "t_random_best": {r["seed"]: r["t_random_best"] for r in rows},
               "t_tpe_reach": {r["seed"]: r["t_tpe_reach"] for r in rows},
               "heldout": {k: {kk: vv for kk, vv in v.items() if kk != "params"} for k, v in table.items()},
               "wall_s": round(time.time() - started, 1)}
    (args.out / "summary.json").write_text(json.dumps({**summary, "curves": [r["curves"] for r in rows]}))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
