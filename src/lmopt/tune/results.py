"""What a study produced: the best config and model, the trials table, the Pareto set, the report.

Files written to the study's output directory (each atomically):
`best/` (the best model so far, kept by the trials themselves), `best.json`, `trials.csv`,
`trials.json`, `history.png`, `importances.png`, `report.md`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from lmopt.io import atomic_write_text, write_json
from lmopt.tune.config import TuneJob
from lmopt.tune.objective import BEST_DIR, best_record
from lmopt.tune.plots import importances, save_plots
from lmopt.tune.space import apply_params


@dataclass
class TuneResult:
    study_name: str
    storage: str
    output: Path
    objectives: list[str]
    directions: list[str]
    best_trial: int | None = None
    best_values: list[float] = field(default_factory=list)
    best_params: dict[str, Any] = field(default_factory=dict)
    best_config: dict[str, Any] = field(default_factory=dict)
    """The tuned step's full config with the best parameters applied (ready to put in a recipe)."""
    best_model: Path | None = None
    """The kept best model (from the best trial this machine ran)."""
    counts: dict[str, int] = field(default_factory=dict)
    pareto: list[dict[str, Any]] = field(default_factory=list)
    """Multi-objective only: the non-dominated finished trials."""
    importances: dict[str, float] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output"], out["best_model"] = str(self.output), str(self.best_model) if self.best_model else None
        return out


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, values, params, worker, seconds, last reported step."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        metrics = t.user_attrs.get("metrics", {})
        reports = t.user_attrs.get("reports", [])
        rows.append({"number": t.number, "state": t.state.name.lower(), "values": t.values,
                     "params": dict(t.params), "worker": t.user_attrs.get("worker"),
                     "seconds": metrics.get("trial_seconds"),
                     "last_step": reports[-1][0] if reports else None,
                     "started": t.datetime_start.timestamp() if t.datetime_start else None,
                     "finished": t.datetime_complete.timestamp() if t.datetime_complete else None})
    return rows


def _best(study: Any, direction: str) -> Any:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not done:
        return None
    sign = 1 if direction == "minimize" else -1
    return min(done, key=lambda t: (sign * t.values[0], t.number))


def summarize(study: Any, job: TuneJob) -> TuneResult:
    directions = job.tune.resolved_directions()
    rows = trial_rows(study)
    result = TuneResult(job.study_name(), job.storage_url(), job.output_dir(), list(job.tune.objectives),
                        directions, trials=rows)
    for row in rows:
        result.counts[row["state"]] = result.counts.get(row["state"], 0) + 1
    best = _best(study, directions[0])
    if best is not None:
        result.best_trial, result.best_values = best.number, list(best.values)
        result.best_params = dict(best.params)
        result.best_config = apply_params(job.base, best.params)
    kept = best_record(result.output)
    if kept is not None:
        result.best_model = result.output / BEST_DIR
    if job.tune.multi_objective:
        result.pareto = sorted(({"number": t.number, "values": list(t.values), "params": dict(t.params)}
                                for t in study.best_trials), key=lambda r: r["values"])
    result.importances = importances(study, 0, job.tune.multi_objective)
    return result


def write_outputs(result: TuneResult, study: Any, job: TuneJob) -> TuneResult:
    """Write the trials table, best config, plots and report next to the kept best model."""
    out = result.output
    out.mkdir(parents=True, exist_ok=True)
    if job.tune.plots:
        result.plots = save_plots(study, out, job.tune.objectives)
    write_json(out / "trials.json", result.trials)
    atomic_write_text(out / "trials.csv", trials_csv(result.trials, job.tune.objectives))
    write_json(out / "best.json", {k: v for k, v in result.to_dict().items() if k != "trials"})
    atomic_write_text(out / "report.md", report_markdown(result))
    return result


def trials_csv(rows: list[dict[str, Any]], objectives: list[str]) -> str:
    names = sorted({p for r in rows for p in r["params"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", *objectives, *names, "worker", "seconds", "last_step"])
    for r in rows:
        values = r["values"] or [None] * len(objectives)
        writer.writerow([r["number"], r["state"], *values, *(r["params"].get(n) for n in names),
                         r["worker"], r["seconds"], r["last_step"]])
    return buf.getvalue()


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def report_markdown(result: TuneResult) -> str:
    lines = [f"# Study `{result.study_name}`", "", f"Storage: `{result.storage}`", "",
             "Trials: " + ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items())), ""]
    if result.best_trial is not None:
        pairs = zip(result.objectives, result.best_values, strict=True)
        vals = ", ".join(f"{o} = {_fmt(v)}" for o, v in pairs)
        lines += [f"## Best: trial {result.best_trial} ({vals})", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in result.best_params.items()]
        lines += ["", f"Best model: `{result.best_model}`" if result.best_model else "No model kept.", ""]
    if result.pareto:
        lines += ["## Pareto set", "", "| trial | " + " | ".join(result.objectives) + " | params |",
                  "|---" * (len(result.objectives) + 2) + "|"]
        lines += [f"| {p['number']} | " + " | ".join(_fmt(v) for v in p["values"]) + f" | {p['params']} |"
                  for p in result.pareto]
        lines.append("")
    if result.importances:
        lines += ["## Parameter importances (PED-ANOVA)", "", "| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in result.importances.items()]
        lines.append("")
    lines += [f"![{name}]({fname})" for name, fname in result.plots.items()]
    lines += ["", "## Trials", "", "| # | state | " + " | ".join(result.objectives) + " | seconds | params |",
              "|---" * (len(result.objectives) + 4) + "|"]
    for r in result.trials:
        vals = " | ".join(_fmt(v) for v in (r["values"] or ["-"] * len(result.objectives)))
        if r["state"] == "pruned":  # Optuna keeps the last reported value of a pruned trial
            vals += f" (pruned at step {r['last_step']})"
        lines.append(f"| {r['number']} | {r['state']} | {vals} | {_fmt(r['seconds'])} | "
                     + ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items()) + " |")
    return "\n".join(lines) + "\n"

