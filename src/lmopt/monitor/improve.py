"""The improvement loop: user feedback -> cleaned data -> fine-tuned float source -> compression replayed
-> regression gate against production -> promotion only when the gate passes.

    report = improve(ImproveConfig(model="@production", feedback="days:7", suite="suite.yaml"))
    report.promoted, report.reason

Stages (each resumable; a rerun after a crash redoes only what did not finish):
1. plan: the production model's lineage is walked back past its compression steps (`quantize`,
   `prune`) to its float source; those steps, with their recorded configs, are replayed later.
2. data: rated responses of the feedback window become `{prompt, response}` rows
   (`lmopt.monitor.improve_data`), written to a file named by its content hash.
3. a recipe run by `lmopt.pipeline.run_recipe` (so every step is cached by its inputs and config;
   the caller passes the runner in, since monitor sits below pipeline in the package layering):
   `clean` (dedup, PII, decontamination against the suite's tasks and texts), `finetune` (LoRA by
   default, merged) on the float source, then the replayed compression steps.
4. the gate (`lmopt.monitor.gate.check`) of the result against production, cached by both hashes.
5. promotion of the alias when the gate passes (and the alias still points where it did at the
   start), otherwise nothing changes and the report says why. Every run is recorded (kind `improve`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.io import atomic_write_text
from lmopt.models.card import content_hash
from lmopt.monitor.config import ImproveConfig
from lmopt.monitor.gate import check
from lmopt.monitor.gate_report import GateReport
from lmopt.monitor.improve_data import feedback_rows, rated_window, write_rows
from lmopt.monitor.lineage import lineage
from lmopt.monitor.models import ModelRecord, alias_name, aliases, get_model, open_registry, promote
from lmopt.monitor.registry import Registry
from lmopt.monitor.suite import Suite, load_suite
from lmopt.monitor.traffic import TrafficStore
from lmopt.settings import default_data_dir, lmopt_home
from lmopt.step import get_step

RunRecipe = Callable[[dict[str, Any], Path, Callable[[str], Any], Registry], dict[str, Any]]
"""`run(recipe_map, base_dir, log, registry) -> summary`: `lmopt.pipeline.run_recipe` on the parsed map,
recording each step it runs in the registry.
Passed in by the caller because `lmopt.monitor` sits below `lmopt.pipeline` in the package layering."""

COMPRESSION_STEPS = ("quantize", "prune")
"""Steps whose output is a compressed copy of their input: replayed after fine-tuning the input."""


@dataclass
class Plan:
    production: dict[str, Any]
    """hash, path, step of the model being improved."""
    float_source: dict[str, Any]
    """hash, path, step of the model that is fine-tuned."""
    replay: list[dict[str, Any]]
    """Compression steps re-applied after fine-tuning, oldest first: {step: config}."""
    feedback: dict[str, int]
    """Counts: rated, corrections, well_rated, truncated (well rated but cut at max_tokens), left_out, rows."""
    recipe: dict[str, Any]
    suite: str
    alias: str


@dataclass
class ImproveReport:
    plan: Plan
    promoted: bool = False
    reason: str = ""
    candidate: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    """The gate report's summary: passed, failed metrics, each metric's estimate and interval."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _info(record: ModelRecord) -> dict[str, Any]:
    return {"hash": record.hash, "path": record.path, "step": record.step, "name": record.name}


def float_source(ref: str, registry: Registry) -> tuple[ModelRecord, list[dict[str, Any]]]:
    """The model's nearest ancestor not made by a compression step, and those steps (oldest first)."""
    replay: list[dict[str, Any]] = []
    for record in lineage(ref, registry):
        if record.step not in COMPRESSION_STEPS:
            if not record.path or not (Path(record.path) / "config.json").exists():
                raise LmoptError(f"{ref}: its float source {record.hash} ({record.path}) is no longer on disk")
            return record, replay
        replay.insert(0, {record.step: record.lineage.get("config") or {}})
    raise LmoptError(f"{ref}: no float model in its registered lineage (register the model it was "
                     "quantized or pruned from)")


def _suite_sets(suite: Suite) -> list[str]:
    return [g.task for g in suite.tasks] + [g.source for g in suite.perplexity]


def plan_improve(config: ImproveConfig, registry: Registry, store: TrafficStore,
                 workdir: Path, write: bool = True) -> tuple[Plan, Path | None]:
    """Everything decided before any training: the models, the data rows, the recipe."""
    production = get_model(config.model, registry, register=True)
    source, replay = float_source(production.hash, registry)
    if not config.replay:
        replay = []
    rated = rated_window(store, config.feedback)
    if not rated:
        raise LmoptError(f"feedback window '{config.feedback}': no rated responses in {store.url}")
    rows, counts = feedback_rows(rated, config.min_rating, config.corrections)
    counts["rows"] = len(rows)
    if not rows:
        raise LmoptError(f"feedback window '{config.feedback}': {counts['rated']} rated responses, none "
                         f"rated at least {config.min_rating} or corrected: nothing to learn from")
    suite = load_suite(config.suite)
    clean = config.clean.model_copy(update={"text_field": ["prompt", "response"]})  # the rows' fields
    if config.decontaminate_suite:
        sets = list(dict.fromkeys([*clean.decontaminate, *_suite_sets(suite)]))
        clean = clean.model_copy(update={"decontaminate": sets})
    data = write_rows(rows, workdir / "data") if write else None
    data_dir = config.data_dir or default_data_dir()
    steps = [{"clean": clean.to_dict()}, {"finetune": config.finetune.to_dict()}, *replay]
    for i, step in enumerate(steps):  # a recorded config that no longer parses fails now, not mid-run
        ((name, raw),) = step.items()
        get_step(name).parse(raw, where=f"improve recipe: steps.{i}.{name}")
    recipe = {"name": "improve", "model": source.path, "data": str(data) if data else None,
              "data_dir": str(data_dir) if data_dir else None, "dtype": "float32",
              "workdir": str(workdir / "steps"), "steps": steps}
    plan = Plan(_info(production), _info(source), replay, counts, recipe, suite.name, alias_name(config.alias))
    return plan, data


def _gate_summary(report: GateReport) -> dict[str, Any]:
    return {"passed": report.passed, "failed": report.failed, "registry_id": report.registry_id,
            "metrics": [{k: getattr(m, k) for k in ("name", "verdict", "baseline", "candidate", "estimate",
                                                    "low", "high", "tolerance", "compared", "worse")}
                        for m in report.metrics]}


def significantly_better(metric: dict[str, Any]) -> bool:
    """The whole interval on the better side of no change (0 for differences, 1 for ratios)."""
    neutral = 1.0 if metric["compared"] == "ratio" else 0.0
    return metric["low"] > neutral if metric["worse"] == "below" else metric["high"] < neutral


def _gate(candidate: Path, baseline: str, config: ImproveConfig, registry: Registry, workdir: Path,
          log: Callable[[str], Any]) -> GateReport:
    """The gate report of candidate vs baseline, cached by both hashes and the suite's content."""
    suite = load_suite(config.suite)
    key = f"{content_hash(candidate)}-{content_hash(baseline)}-{suite.fingerprint()}"
    cached = workdir / "gates" / f"{key}.json"
    if cached.exists():
        log(f"gate ({key}): cached")
        return GateReport.model_validate_json(cached.read_text())
    log(f"gate: {candidate} against {baseline} on suite '{suite.name}'")
    report = check(candidate, baseline, suite, registry=registry, data_dir=config.data_dir or default_data_dir(),
                   log=log)
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cached, report.to_json())
    return report


def _decide(report: ImproveReport, gate: GateReport, config: ImproveConfig) -> str | None:
    """Why the candidate must not be promoted, or None."""
    if not gate.passed:
        worse = [m for m in report.gate["metrics"] if m["verdict"] == "fail"]
        return "the gate failed: " + "; ".join(
            f"{m['name']} {m['compared']} {m['estimate']:.4g} [{m['low']:.4g}, {m['high']:.4g}] beyond "
            f"{m['tolerance']:.4g}" for m in worse)
    by_name = {m["name"]: m for m in report.gate["metrics"]}
    for name in config.require_better:
        if name not in by_name:
            raise LmoptError(f"require_better: the suite has no metric '{name}' (has {', '.join(by_name)})")
        if not significantly_better(by_name[name]):
            m = by_name[name]
            return (f"{name} did not improve beyond its interval ({m['compared']} {m['estimate']:.4g} "
                    f"[{m['low']:.4g}, {m['high']:.4g}])")
    return None


def improve(config: ImproveConfig | None = None, *, run: RunRecipe | None = None,
            registry: Registry | str | None = None, traffic: TrafficStore | str | None = None,
            dry_run: bool = False, log: Callable[[str], Any] = print) -> ImproveReport:
    """Run the loop (see the module docstring); `dry_run` returns the plan and changes nothing.

    `run` runs the recipe (see `RunRecipe`; `lmopt.cli.monitoring.run_recipe_map` is one); only a dry
    run may leave it out.
    """
    config = config or ImproveConfig()
    reg = open_registry(registry)
    store = traffic if isinstance(traffic, TrafficStore) else TrafficStore(traffic)
    workdir = Path(config.workdir).expanduser() if config.workdir else lmopt_home() / "improve"
    plan, data = plan_improve(config, reg, store, workdir, write=not dry_run)
    report = ImproveReport(plan, dry_run=dry_run)
    if dry_run:
        report.reason = "dry run: nothing trained or promoted"
        return report
    if run is None:
        raise LmoptError("improve: give `run` (lmopt.cli.monitoring.run_recipe_map) to run the recipe")
    started = aliases(reg).get(plan.alias)
    cleaned = run({**plan.recipe, "steps": plan.recipe["steps"][:1]}, workdir, log, reg)  # cached for the full run
    kept = cleaned["steps"][0]["metrics"].get("rows_out", 0)
    if kept < config.min_rows:
        report.steps = cleaned["steps"]
        report.reason = f"{kept} training rows after cleaning, fewer than min_rows ({config.min_rows})"
        return _finish(report, reg, log)
    summary = run(plan.recipe, workdir, log, reg)
    report.steps = summary["steps"]
    candidate = Path(summary["output"])
    report.candidate = {"path": str(candidate), "hash": content_hash(candidate)}
    gate = _gate(candidate, plan.production["path"], config, reg, workdir, log)
    report.gate = _gate_summary(gate)
    why_not = _decide(report, gate, config)
    now = aliases(reg).get(plan.alias)
    if why_not is None and now != started:
        report.reason = f"@{plan.alias} moved to {now} while this run was going; not promoting over it"
    elif why_not is None:
        promote(candidate, plan.alias, reg, reason=f"lmopt improve: gate '{plan.suite}' passed "
                                                   f"(gate run {gate.registry_id})")
        report.promoted = True
        report.reason = f"gate '{plan.suite}' passed: @{plan.alias} -> {report.candidate['hash']}"
    else:
        report.reason = why_not + f"; @{plan.alias} stays on {plan.production['hash']}"
    return _finish(report, reg, log)


def _finish(report: ImproveReport, registry: Registry, log: Callable[[str], Any]) -> ImproveReport:
    log(report.reason)
    registry.record("improve", report.plan.production["path"],
                    {"promoted": report.promoted, "reason": report.reason, "feedback": report.plan.feedback,
                     "candidate": report.candidate, "gate": report.gate},
                    model_hash=report.plan.production["hash"], config={"recipe": report.plan.recipe})
    return report
