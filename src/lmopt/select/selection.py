"""`select(task_type, candidates, data, constraints)`: measure candidate architectures on the user's task
and recommend one from the measurements.

Every candidate (`MODEL[:WAY]`, see `selection_candidates`) is checked before anything loads (family,
way and task type must go together; constraints and metrics must parse), then measured one after
another on this machine (`selection_measure`). The recommendation is the best candidate on the objective
among those meeting every constraint, and the Pareto front over `front_metrics` shows the trade-offs;
when none is feasible, each candidate's violated constraints say why. Nothing is decided by a fixed rule
about families.

With an `output` directory, each candidate's row is saved as soon as it is measured
(`select.rows.json`, keyed by the config and a hash of the data): a run stopped part-way and started
again with the same settings measures only the candidates it had not finished.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.hardware import detect_hardware
from lmopt.io import atomic_write_text, write_json
from lmopt.select.selection_candidates import Candidate, check_way, parse_candidate
from lmopt.select.selection_config import SelectConfig
from lmopt.select.selection_constraints import best_feasible, pareto_front
from lmopt.select.selection_data import TaskData, load_task_data
from lmopt.select.selection_measure import measure_candidate

TABLE_COLUMNS = ["candidate", "accuracy", "ref_nll", "latency_p50_ms", "latency_p99_ms", "throughput_items_s",
                 "peak_mb", "size_mb", "adapt_s", "params_m"]


@dataclass
class SelectResult:
    task_type: str
    objective: str
    constraints: list[str]
    rows: list[dict[str, Any]]
    front: list[str]
    """Candidates on the Pareto front of `front_metrics`."""
    front_metrics: list[str]
    recommended: str | None
    reasons: dict[str, list[str]] = field(default_factory=dict)
    """Candidate -> the constraints it violates (empty when feasible)."""
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        columns = [c for c in TABLE_COLUMNS if any(row.get(c) is not None for row in self.rows)]
        lines = ["| " + " | ".join(columns + ["front", "feasible"]) + " |",
                 "|" + "---|" * (len(columns) + 2)]
        for row in self.rows:
            cells = [_cell(row.get(c)) for c in columns]
            name = row["candidate"]
            cells += ["*" if name in self.front else "", "yes" if not self.reasons.get(name) else "no"]
            lines.append("| " + " | ".join(cells) + " |")
        verdict = (f"Recommended: **{self.recommended}** (best {self.objective} among the feasible)"
                   if self.recommended else "No candidate meets every constraint: " +
                   "; ".join(f"{k}: {', '.join(v)}" for k, v in self.reasons.items()))
        shown = ", ".join(self.constraints) or "none"
        return "\n".join(lines + ["", f"Constraints: {shown}. {verdict}.", ""])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _candidates(items: list[str | Candidate], task_type: str) -> list[Candidate]:
    out = []
    for item in items:
        if isinstance(item, Candidate):
            item.way = check_way(item.name, item.family, task_type, item.way)
            out.append(item)
        else:
            out.append(parse_candidate(item, task_type))
    names = [c.name for c in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LmoptError(f"candidates: {', '.join(duplicates)} given twice")
    return out


def choose(rows: list[dict[str, Any]], config: SelectConfig) -> tuple[list[str], str | None, dict[str, list[str]]]:
    """(front, recommended, violated constraints per candidate) from measured rows."""
    constraints = config.parsed_constraints()
    objective = config.the_objective()
    front = [rows[i]["candidate"] for i in pareto_front(rows, config.front_metrics())]
    best = best_feasible(rows, constraints, objective)
    reasons = {row["candidate"]: [f"{c.text} (measured {_cell(row.get(c.metric))})" for c in constraints
                                  if not c.holds(row.get(c.metric))] for row in rows}
    return front, None if best is None else rows[best]["candidate"], reasons


def select(task_type: str | None = None, candidates: list[str | Candidate] | None = None, data: Any = None,
           constraints: str | None = None, config: SelectConfig | None = None, *,
           log: Any = None) -> SelectResult:
    """Measure every candidate on `data` and recommend one (see the module docstring). Arguments given
    here override the config's; `data` may also be a `TaskData` or a list of rows."""
    import torch  # lazy: torch takes ~1 s; lmopt.select's configs are read at CLI start-up

    base = (config or SelectConfig()).to_dict()
    overrides = {"task_type": task_type, "constraints": constraints}
    base.update({k: v for k, v in overrides.items() if v is not None})
    items = candidates if candidates is not None else base["candidates"]
    base["candidates"] = [c for c in items if isinstance(c, str)]
    cfg = SelectConfig.parse(base, where="select")
    chosen = _candidates(list(items), cfg.task_type)
    if not chosen:
        raise LmoptError("select: no candidates given")
    task = data if isinstance(data, TaskData) else load_task_data(
        cfg.task_type, data if data is not None else _need(cfg.data), cfg.eval_data, cfg.train_rows,
        cfg.train_limit, cfg.eval_limit)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or detect_hardware().threads)
    progress = _Progress(Path(cfg.output) / "select.rows.json" if cfg.output else None, cfg, task)
    rows = []
    try:
        for candidate in chosen:
            row = progress.row(candidate)
            if row is None:
                if log:
                    log(f"measuring {candidate.name} ({candidate.family})")
                torch.manual_seed(cfg.seed)
                row = measure_candidate(candidate, task, cfg)
                progress.save(candidate, row)
            elif log:
                log(f"{candidate.name}: measured by an earlier run with the same settings ({progress.path})")
            if log:
                log("  " + ", ".join(f"{k}={_cell(row.get(k))}" for k in TABLE_COLUMNS[1:] if row.get(k) is not None))
            rows.append(row)
    finally:
        torch.set_num_threads(before)
    front, recommended, reasons = choose(rows, cfg)
    machine = {"cpu": detect_hardware().cpu, "threads": cfg.threads or detect_hardware().threads,
               "loadavg": _loadavg()}
    result = SelectResult(cfg.task_type, cfg.the_objective(), [c.text for c in cfg.parsed_constraints()], rows,
                          front, cfg.front_metrics(), recommended, reasons, machine)
    if cfg.output:
        out = Path(cfg.output)
        write_json(out / "select.json", result.to_dict())
        atomic_write_text(out / "select.md", result.markdown())
    return result


ROWS_VERSION = 1
"""Raise when what a row holds or how it is measured changes: saved rows of another version are not reused."""


class _Progress:
    """Rows measured so far, saved after each candidate so a stopped run resumes. A row is reused only
    under the same rows version, config (candidates and output aside), data, model reference and
    weights (the reference's files: sizes and modification times). An unreadable file is ignored."""

    def __init__(self, path: Path | None, cfg: SelectConfig, task: TaskData) -> None:
        settings = {k: v for k, v in cfg.to_dict().items() if k not in ("candidates", "output")}
        blob = json.dumps({"version": ROWS_VERSION, "config": settings, "data": asdict(task)}, sort_keys=True,
                          default=str)
        self.path, self.key = path, hashlib.sha256(blob.encode()).hexdigest()[:16]
        try:
            saved = json.loads(path.read_text()) if path is not None and path.exists() else {}
            rows = saved["rows"] if isinstance(saved, dict) and saved.get("key") == self.key else {}
        except (OSError, ValueError, KeyError):
            rows = {}
        self.rows: dict[str, Any] = rows if isinstance(rows, dict) else {}

    def row(self, candidate: Candidate) -> dict[str, Any] | None:
        entry = self.rows.get(candidate.name)
        if candidate.build is not None or not isinstance(entry, dict):
            return None  # in-memory candidates are always measured: nothing identifies their weights
        if entry.get("ref") != candidate.ref or entry.get("stamp") != _stamp(candidate.ref):
            return None
        return entry.get("row")

    def save(self, candidate: Candidate, row: dict[str, Any]) -> None:
        if self.path is not None:
            self.rows[candidate.name] = {"ref": candidate.ref, "stamp": _stamp(candidate.ref), "row": row}
            write_json(self.path, {"key": self.key, "rows": self.rows})


def _stamp(ref: str | None) -> list[list[Any]]:
    """(name, size, mtime) of a model reference's file, or of the files directly in its directory."""
    if ref is None or not Path(ref).exists():
        return []
    path = Path(ref)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files]


def _need(path: str | None) -> str:
    if path is None:
        raise LmoptError("select: no data given (a JSONL file of the task's rows)")
    return path


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None
