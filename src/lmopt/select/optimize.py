"""`lmopt optimize`: search pipelines of existing steps for the best model under constraints, on this machine.

One run:
1. check the inputs (tasks, models, data) before any work; lock the output dir; open or resume the study;
2. measure the reference model at both fidelities (once per output dir: `references.json`);
3. trials until the budget or `n_trials` ends them: draw a candidate (`search_space`), build it at the
   cheap fidelity with `run_recipe` (one step cache under `<output>/steps`, so pipelines sharing a base
   and first steps compute them once) and measure it; a promising estimate (or the first one) is built
   and measured at the full fidelity too. Optuna gets the estimates (one fidelity for every trial);
   the front and the best come from full measurements only;
4. after every trial, the best model, the front with a recipe per point, the plot and the report are
   rewritten (`optimize_outputs`), so a search stopped at any moment leaves its results.
The budget is wall-clock time over every run on the output dir; no trial starts when the time left is
below a typical trial's (a trial in progress at the deadline finishes).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from lmopt.errors import LmoptError
from lmopt.evaluate import check_task
from lmopt.io import write_json
from lmopt.pipeline import Recipe, run_recipe
from lmopt.select.optimize_config import OptimizeConfig
from lmopt.select.optimize_front import choose_best, flat_metrics, front_of, objective_values, promising, violations
from lmopt.select.optimize_measure import MeasureSpec, measure
from lmopt.select.optimize_outputs import drop_artifacts, write_outputs
from lmopt.select.optimize_study import (
    counted_trials,
    open_study,
    recover_interrupted,
    run_lock,
    set_constraints,
    study_key,
    trial_record,
)
from lmopt.select.search_space import Candidate, Space, candidate_steps, default_params, suggest
from lmopt.settings import lmopt_home
from lmopt.step import NullRecorder

FIDELITIES = ("cheap", "full")
MAX_REPEATS = 25
"""The sampler drew only finished pipelines this many times in a row: the space is used up."""


@dataclass
class OptimizeResult:
    output: Path
    best: dict[str, Any] | None
    best_model: Path | None
    front: list[dict[str, Any]]
    any_feasible: bool
    counts: dict[str, int]
    spent_s: float
    stopped: str
    """Why the run ended: `n_trials`, `budget`, `space exhausted`."""
    state: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "best": self.best, "best_model": str(self.best_model or "") or None,
                "front": self.front, "any_feasible": self.any_feasible, "counts": self.counts,
                "spent_s": round(self.spent_s, 1), "stopped": self.stopped}


def prepare(config: OptimizeConfig, base_dir: Path) -> OptimizeConfig:
    """Check what can be checked before any work; make local paths absolute."""
    if not config.models:
        raise LmoptError("optimize: give at least one candidate model")

    def local(ref: str | None) -> str | None:
        return str((base_dir / ref).resolve()) if ref and (base_dir / ref).exists() else ref

    for task in config.measured_tasks():
        check_task(task)
    train_data = local(config.train_data)
    if train_data and not Path(train_data).exists() and train_data not in ("pydoc-train", "pydoc", "wikitext2"):
        raise LmoptError(f"train_data: {train_data}: file not found")
    return config.model_copy(update={"models": [local(m) for m in config.models], "train_data": train_data,
                                     "reference": local(config.reference), "calibration": local(config.calibration)})


def output_dir(config: OptimizeConfig, base_dir: Path) -> Path:
    if config.output:
        out = Path(config.output).expanduser()
        return out if out.is_absolute() else base_dir / out
    return lmopt_home() / "optimize" / study_key(config)


class Search:
    """One run of a search: the study, the clock, the references, and the trial loop."""

    def __init__(self, config: OptimizeConfig, out: Path, base_dir: Path, log: Callable[[str], Any]) -> None:
        self.config, self.out, self.base_dir, self.log = config, out, base_dir, log
        self.constraints = config.parsed_constraints()
        self.study = open_study(out, config)
        self.space = Space.build(config, config.models)
        self.reference_model = config.reference or config.models[0]
        self.spent_before = float(self.study.user_attrs.get("spent_s", 0.0))
        self.started = time.time()
        self.references: dict[str, Any] = {}

    def spent(self) -> float:
        return self.spent_before + time.time() - self.started

    def save_clock(self) -> None:
        self.study.set_user_attr("spent_s", round(self.spent(), 1))

    def measure(self, model: str, dtype: str, threads: int, fidelity: str, tasks: list[str] | None = None,
                speed: bool = True) -> dict[str, Any]:
        spec = MeasureSpec(model=model, dtype=dtype, threads=threads, fidelity=getattr(self.config, fidelity),
                           tasks=self.config.measured_tasks() if tasks is None else tasks, speed=speed,
                           data_dir=self.config.data_dir)
        return measure(spec, self.config.isolate, self.out / "scratch")

    def measure_references(self) -> None:
        """The reference model's figures at both fidelities (kept in references.json across runs)."""
        path, cfg = self.out / "references.json", self.config
        threads = max(self.space.threads)
        for fidelity in FIDELITIES:
            if fidelity in self.references:
                continue
            self.log(f"reference {self.reference_model} ({fidelity})")
            same = cfg.quality_reference_dtype == cfg.speed_reference_dtype
            quality = self.measure(self.reference_model, cfg.quality_reference_dtype, threads, fidelity, speed=same)
            flat = flat_metrics(quality, cfg, None)
            seconds = quality["seconds"]
            if not same:
                speed = self.measure(self.reference_model, cfg.speed_reference_dtype, threads, fidelity, tasks=[])
                flat["speed_decode_tok_s"], seconds = speed["decode_tok_s"], seconds + speed["seconds"]
            else:
                flat["speed_decode_tok_s"] = flat["decode_tok_s"]
            self.references[fidelity] = {**flat, "seconds": seconds}
            write_json(path, {"key": study_key(cfg), **self.references})
            self.save_clock()

    def trial_estimate_s(self) -> float:
        """Typical trial duration: the median of finished trials, else the reference measurements' time."""
        done = [t.user_attrs["seconds"] for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "seconds" in t.user_attrs]
        if done:
            return statistics.median(done)
        return sum(self.references[f]["seconds"] for f in FIDELITIES)

    def build(self, cand: Candidate, fidelity: str) -> tuple[str, list[dict[str, Any]]]:
        """The candidate's model at a fidelity: the final step's artifact, or the base when there is no step."""
        steps = candidate_steps(cand, getattr(self.config, fidelity), self.config)
        if not steps:
            return cand.base, steps
        recipe = Recipe(name=f"optimize-{fidelity}", model=cand.base, data_dir=self.config.data_dir,
                        workdir=str(self.out / "steps"), steps=steps)
        summary = run_recipe(recipe, self.base_dir, NullRecorder(), log=lambda line: self.log("  " + line))
        return summary["output"], steps

    def assess(self, cand: Candidate, fidelity: str, trial: Any) -> tuple[dict[str, float], list[float]]:
        model, steps = self.build(cand, fidelity)
        measured = self.measure(model, cand.dtype, cand.threads, fidelity)
        metrics = flat_metrics(measured, self.config, self.references[fidelity])
        missed = violations(metrics, self.constraints)
        prefix = "estimate" if fidelity == "cheap" else "full"
        trial.set_user_attr(prefix, metrics)
        trial.set_user_attr(f"{prefix}_violations" if fidelity == "cheap" else "violations", missed)
        trial.set_user_attr("cheap_model" if fidelity == "cheap" else "model", model)
        if fidelity == "full":
            trial.set_user_attr("steps", steps)
        return metrics, missed

    def should_promote(self, number: int, estimate: dict[str, float], missed: list[float]) -> bool:
        records = [trial_record(t) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if self.config.promote == "all" or not any(r["full"] for r in records):
            return True  # the first full measurement makes the best-so-far exist after the first trial
        others = [(objective_values(r["estimate"], self.config), r["estimate_violations"]) for r in records
                  if r["number"] != number and r["estimate"]]  # repeats of a finished trial have none
        return promising(objective_values(estimate, self.config), missed, others, self.config.directions(),
                         self.config.promote_margin)

    def same_pipeline(self, params: dict[str, Any]) -> Any:
        """A finished trial with these very parameters (small discrete spaces repeat), or None."""
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return next((t for t in done if t.params == params and "duplicate_of" not in t.user_attrs), None)

    def run_trial(self) -> bool:
        """Run one trial; False when it repeated a finished one (its figures are reused, nothing is run)."""
        trial = self.study.ask()
        started = time.time()
        cand = suggest(trial, self.space)
        trial.set_user_attr("candidate", cand.to_dict())
        trial.set_user_attr("label", cand.label())
        earlier = self.same_pipeline(trial.params)
        if earlier is not None:
            trial.set_user_attr("duplicate_of", earlier.number)
            set_constraints(trial, self.constraints, earlier.user_attrs.get("constraints", []))
            self.study.tell(trial, earlier.values)
            return False
        self.log(f"trial {trial.number}: {cand.label()}")
        try:
            try:
                estimate, missed = self.assess(cand, "cheap", trial)
                set_constraints(trial, self.constraints, missed)
                self.log(f"  estimate: {self.describe(estimate, missed)}")
                if self.should_promote(trial.number, estimate, missed):
                    full, missed_full = self.assess(cand, "full", trial)
                    self.log(f"  full: {self.describe(full, missed_full)}")
            except Exception as exc:  # the candidate failed (a step or its measurement): record, go on
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                trial.set_user_attr("error", f"{type(exc).__name__}: {message}"[:300])
                trial.set_user_attr("seconds", round(time.time() - started, 1))
                self.study.tell(trial, state=TrialState.FAIL)
                self.log(f"  failed: {message}")
                return True
        except KeyboardInterrupt:
            self.study.tell(trial, state=TrialState.FAIL)  # no `error`: the next run re-runs it
            raise
        trial.set_user_attr("seconds", round(time.time() - started, 1))
        self.study.tell(trial, objective_values(estimate, self.config))
        return True

    def describe(self, metrics: dict[str, float], missed: list[float]) -> str:
        text = f"{self.config.objective} {metrics[self.config.objective]:.4g}, {metrics['decode_tok_s']:.1f} tok/s"
        off = [str(c) for c, v in zip(self.constraints, missed, strict=True) if v > 0]
        return text + (f"; misses {', '.join(off)}" if off else ("; meets constraints" if self.constraints else ""))

    def state(self) -> dict[str, Any]:
        records = [trial_record(t) for t in self.study.get_trials(deepcopy=False)
                   if t.state != TrialState.WAITING]
        front, any_feasible = front_of(records, self.config)
        counts: dict[str, int] = {}
        for r in records:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        return {"records": records, "front": front, "best": choose_best(records, self.config),
                "any_feasible": any_feasible, "counts": counts, "reference": self.references,
                "reference_model": self.reference_model, "models": self.config.models, "spent_s": self.spent()}

    def publish(self) -> dict[str, Any]:
        """Rewrite every output from the study, then drop the artifacts nothing points to any more."""
        self.save_clock()
        state = self.state()
        write_outputs(self.out, self.config, state)
        if not self.config.keep_artifacts:
            drop_artifacts(self.out, state)
        return state

    def run(self) -> OptimizeResult:
        requeued = recover_interrupted(self.study)
        if requeued:
            self.log(f"resuming: trial(s) {', '.join(map(str, requeued))} were interrupted and run again")
        self.references = _read_references(self.out, self.config)
        self.measure_references()
        if not self.study.get_trials(deepcopy=False):
            for params in default_params(self.space) if self.config.enqueue_defaults else []:
                self.study.enqueue_trial(params)
        stopped, repeats = "n_trials", 0
        while self.config.n_trials is None or counted_trials(self.study) < self.config.n_trials:
            if repeats >= MAX_REPEATS:
                stopped = "space exhausted"
                break
            left = self.config.budget_min * 60 - self.spent()
            if left < self.trial_estimate_s():
                if not self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                    raise LmoptError(
                        f"budget of {self.config.budget_min:g} min is too small for one trial: about "
                        f"{self.trial_estimate_s():.0f} s are needed and {max(left, 0):.0f} s are left (the reference "
                        f"measurements are kept in {self.out}); raise --budget-min")
                stopped = "budget"
                break
            if self.run_trial():
                repeats = 0
                self.publish()
            else:
                repeats += 1
        state = self.publish()
        if (self.out / "scratch").is_dir() and not any((self.out / "scratch").iterdir()):
            (self.out / "scratch").rmdir()
        best = state["best"]
        best_model = self.out / "best" if best and (self.out / "best").exists() else None
        return OptimizeResult(self.out, best, best_model, state["front"], state["any_feasible"], state["counts"],
                              state["spent_s"], stopped, state)


def _read_references(out: Path, config: OptimizeConfig) -> dict[str, Any]:
    path = out / "references.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k in FIDELITIES} if data.get("key") == study_key(config) else {}


def optimize(config: OptimizeConfig, base_dir: Path | None = None, log: Callable[[str], Any] = print) -> OptimizeResult:
    """Run (or resume) the search `config` describes; see the module docstring."""
    base_dir = base_dir or Path.cwd()
    config = prepare(config, base_dir)
    out = output_dir(config, base_dir)
    with run_lock(out):
        return Search(config, out, base_dir, log).run()
