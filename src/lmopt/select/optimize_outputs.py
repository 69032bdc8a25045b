"""What `lmopt optimize` leaves on disk after every trial, each file written atomically.

`best/` (the chosen model, copied only when the choice changes) and `best.json`; `front.json` (the Pareto
front of the fully measured candidates) with `recipes/trial-N.yaml` for each front point and the best
(run it with `lmopt run` to rebuild and re-measure that point); `trials.json` (every trial, estimates
included); `pareto.png`; `report.md`. `front_table` is the same front as a rich table.
`drop_artifacts` removes the models of candidates that are neither on the front nor the best.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import yaml
from rich.table import Table

from lmopt.io import atomic_directory, atomic_path, atomic_write_text, write_json
from lmopt.models.load import resolve
from lmopt.pipeline import Recipe
from lmopt.select.optimize_config import OptimizeConfig

BEST_DIR = "best"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def recipe_yaml(record: dict[str, Any], config: OptimizeConfig) -> str:
    """A recipe that rebuilds the record's model and measures its quality, with the run settings above it."""
    cand = record["candidate"]
    has_prune = any("prune" in step for step in record["steps"])
    # `dtype` also sets the prune step's dtype; bf16 there would change the artifact, so leave it to auto.
    dtype = cand["dtype"] if cand["dtype"] == "float32" or not has_prune else "auto"
    recipe: dict[str, Any] = {"name": f"optimize-trial-{record['number']}", "model": cand["base"], "dtype": dtype}
    if config.data_dir:
        recipe["data_dir"] = config.data_dir
    recipe["steps"] = record["steps"]
    recipe["evaluate"] = {"tasks": config.measured_tasks(), "limit": config.full.limit,
                          "seq_len": config.full.seq_len}
    Recipe.parse(recipe, where=f"recipe of trial {record['number']}").validate_steps("")
    figures = ", ".join(f"{k} {_fmt(v)}" for k, v in record["full"].items() if k in _shown(config))
    header = (f"# lmopt optimize, trial {record['number']}: {record['label']}\n"
              f"# measured with dtype {cand['dtype']} and threads {cand['threads']}: {figures}\n"
              f"# rebuild and re-measure: LMOPT_THREADS={cand['threads']} lmopt run THIS_FILE\n")
    return header + yaml.safe_dump(recipe, sort_keys=False)


def _shown(config: OptimizeConfig) -> list[str]:
    """Metric columns: the objective, decode speed, then each constrained metric."""
    names = [config.objective, "decode_tok_s", *(c.metric for c in config.parsed_constraints())]
    return list(dict.fromkeys(names))


def point_summary(record: dict[str, Any], config: OptimizeConfig) -> dict[str, Any]:
    return {"trial": record["number"], "pipeline": record["label"], "candidate": record["candidate"],
            "metrics": record["full"], "feasible": record["feasible"], "violations": record["violations"],
            "model": record.get("model"), "recipe": f"recipes/trial-{record['number']}.yaml"}


def copy_best(out: Path, record: dict[str, Any]) -> Path | None:
    """Copy the best record's model to `out/best` unless it is already there; None for a hub model."""
    target = out / BEST_DIR
    info = out / "best.json"
    if target.exists() and info.exists() and json.loads(info.read_text()).get("trial") == record["number"]:
        return target
    source = resolve(record["model"])
    if isinstance(source, str):
        return None
    atomic_directory(target, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))
    return target


def write_outputs(out: Path, config: OptimizeConfig, state: dict[str, Any]) -> None:
    """Write every file listed in the module docstring from `state` (front, best, records, references)."""
    front, best = state["front"], state["best"]
    names = set()
    for record in [*front, *([best] if best else [])]:
        names.add(f"trial-{record['number']}.yaml")
        atomic_write_text(out / "recipes" / f"trial-{record['number']}.yaml", recipe_yaml(record, config))
    for stale in (out / "recipes").glob("trial-*.yaml"):  # points that left the front
        if stale.name not in names:
            stale.unlink()
    if best is not None:
        kept = copy_best(out, best)
        write_json(out / "best.json", {**point_summary(best, config), "path": str(kept) if kept else None})
    write_json(out / "front.json", {"objectives": [config.objective, "decode_tok_s"],
                                    "directions": config.directions(), "constraints": config.constraints,
                                    "any_feasible": state["any_feasible"],
                                    "points": [point_summary(r, config) for r in front]})
    write_json(out / "trials.json", state["records"])
    save_plot(out / "pareto.png", config, state)
    atomic_write_text(out / "report.md", report_markdown(config, state))


def drop_artifacts(out: Path, state: dict[str, Any]) -> None:
    """Remove final-step outputs of candidates off the front and not the best (prefixes stay; a later
    pipeline that needs a removed output rebuilds it, as for any missing cache entry)."""
    workdir = (out / "steps").resolve()

    def step_dir(model: str | None) -> Path | None:
        path = Path(model).resolve() if model else None
        return next((p for p in ([path, *path.parents] if path else []) if p.parent == workdir), None)

    kept = {step_dir(r["model"]) for r in [*state["front"], *([state["best"]] if state["best"] else [])]}
    for record in state["records"]:
        for model in (record["cheap_model"], record["model"]):
            found = step_dir(model)
            if found is not None and found not in kept and found.exists():
                shutil.rmtree(found, ignore_errors=True)


def _bound_lines(ax: Any, config: OptimizeConfig, reference: dict[str, Any]) -> None:
    """Dashed lines at the constraints that bound the plot's two axes."""
    ref_quality, ref_speed = reference.get(config.objective), reference.get("speed_decode_tok_s")
    if ref_quality and ref_speed:
        ax.scatter([ref_speed], [ref_quality], marker="x", c="k", label="reference")
    for c in config.parsed_constraints():
        line = {"ls": "--", "c": "gray", "lw": 1, "label": str(c)}
        if c.metric == config.objective:
            ax.axhline(c.bound, **line)
        elif c.metric in ("ppl_ratio", "quality_ratio") and ref_quality:
            ax.axhline(c.bound * ref_quality, **line)
        elif c.metric == "decode_tok_s":
            ax.axvline(c.bound, **line)
        elif c.metric == "decode_speedup" and ref_speed:
            ax.axvline(c.bound * ref_speed, **line)


def save_plot(path: Path, config: OptimizeConfig, state: dict[str, Any]) -> None:
    """Decode tokens/s against the objective: estimates, full measurements, the front, the best."""
    matplotlib.use("Agg", force=False)
    fig, ax = plt.subplots(figsize=(8, 5))
    objective = config.objective
    estimates = [r["estimate"] for r in state["records"] if r.get("estimate")]
    ax.scatter([m["decode_tok_s"] for m in estimates], [m[objective] for m in estimates], s=14, c="lightgray",
               label="estimate (cheap)")
    for feasible, color in ((True, "tab:green"), (False, "tab:orange")):
        pts = [r["full"] for r in state["records"] if r.get("full") and r["feasible"] == feasible]
        ax.scatter([m["decode_tok_s"] for m in pts], [m[objective] for m in pts], s=30, c=color,
                   label="measured, " + ("meets constraints" if feasible else "misses a constraint"))
    front = sorted((r["full"]["decode_tok_s"], r["full"][objective]) for r in state["front"])
    if front:
        ax.plot(*zip(*front, strict=True), c="tab:blue", lw=1, label="front")
    if state["best"]:
        best = state["best"]["full"]
        ax.scatter([best["decode_tok_s"]], [best[objective]], marker="*", s=200, c="gold", edgecolors="k",
                   label=f"best (trial {state['best']['number']})", zorder=3)
    _bound_lines(ax, config, state["reference"].get("full", {}))
    ax.set_xlabel("batch-1 decode tokens/s")
    ax.set_ylabel(objective)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _table_rows(records: list[dict[str, Any]], config: OptimizeConfig) -> list[list[str]]:
    return [[str(r["number"]), r["label"], *(_fmt(r["full"].get(m)) for m in _shown(config)),
             "yes" if r["feasible"] else "no"] for r in records]


def front_table(config: OptimizeConfig, state: dict[str, Any]) -> Table:
    title = "Pareto front" + ("" if state["any_feasible"] else " (no candidate meets every constraint)")
    table = Table(title=title)
    for name in ["trial", "pipeline", *_shown(config), "feasible"]:
        table.add_column(name, justify="left" if name == "pipeline" else "right")
    best = state["best"]["number"] if state["best"] else None
    for row, record in zip(_table_rows(state["front"], config), state["front"], strict=True):
        table.add_row(*row, style="bold" if record["number"] == best else None)
    return table


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def report_markdown(config: OptimizeConfig, state: dict[str, Any]) -> str:
    shown = _shown(config)
    ref = state["reference"].get("full", {})
    lines = [f"# lmopt optimize: {config.objective}", "",
             f"Models: {', '.join(f'`{m}`' for m in state['models'])}; constraints: "
             f"{', '.join(f'`{c}`' for c in config.constraints) or 'none'}; budget {config.budget_min:g} min "
             f"({state['spent_s'] / 60:.1f} min used).", "",
             f"Reference `{state['reference_model']}`: {config.objective} {_fmt(ref.get(config.objective))} "
             f"({config.quality_reference_dtype}), decode {_fmt(ref.get('speed_decode_tok_s'))} tokens/s "
             f"({config.speed_reference_dtype}).", "",
             "Trials: " + ", ".join(f"{n} {s}" for s, n in sorted(state["counts"].items())) + "; "
             f"{sum(1 for r in state['records'] if r.get('full'))} measured in full.", ""]
    best = state["best"]
    if best is None:
        lines += ["No candidate has been measured in full yet.", ""]
    else:
        verdict = "meets every constraint" if best["feasible"] else "misses a constraint (the closest found)"
        lines += [f"## Best: trial {best['number']}, {verdict}", "", f"`{best['label']}`: "
                  + ", ".join(f"{m} {_fmt(best['full'].get(m))}" for m in shown), "",
                  f"Model: `best/`; recipe: `recipes/trial-{best['number']}.yaml`.", ""]
    title = "## Pareto front" + ("" if state["any_feasible"] else " (measured; none meets every constraint)")
    lines += [title, "", *_markdown_table(["trial", "pipeline", *shown, "feasible", "recipe"],
                                          [[*row, f"`recipes/trial-{r['number']}.yaml`"] for row, r in
                                           zip(_table_rows(state["front"], config), state["front"], strict=True)])]
    lines += ["![front](pareto.png)", "", "## All trials", ""]
    rows = [[str(r["number"]), r["state"], r["label"],
             *(_fmt((r.get("full") or r.get("estimate") or {}).get(m)) for m in shown),
             "full" if r.get("full") else ("estimate" if r.get("estimate") else "-"), r.get("error") or ""]
            for r in state["records"]]
    lines += _markdown_table(["trial", "state", "pipeline", *shown, "figures", "error"], rows)
    return "\n".join(lines)
