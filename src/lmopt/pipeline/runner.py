"""Run a recipe: each step in turn, cached by the hash of its inputs and config, recorded once.

Outputs go to `<workdir>/<i>-<name>-<key>/artifact`; `step.json` beside it marks a finished step and
holds its record, so a rerun skips it. A half-finished step directory is cleared and run again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmopt.io import atomic_directory, write_json
from lmopt.models.card import content_hash
from lmopt.models.load import resolve
from lmopt.pipeline.recipe import Recipe
from lmopt.settings import lmopt_home
from lmopt.step import NullRecorder, RunRecorder, Step, StepContext, StepResult, get_step

DONE_MARK = "step.json"


def input_key(ref: Path | str | None) -> str:
    """What identifies a step input: a model dir's content hash, a file's bytes hash, else the name."""
    if ref is None:
        return "none"
    path = Path(ref)
    if path.is_dir():
        return content_hash(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return str(ref)


def step_key(name: str, config: Any, model_key: str, data_key: str) -> str:
    blob = json.dumps([name, config.fingerprint(), model_key, data_key])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _State:
    """The current model and dataset as the recipe advances, with their cache keys."""

    def __init__(self, recipe: Recipe, base_dir: Path) -> None:
        model: Path | str | None = recipe.model
        if model is not None and (base_dir / model).exists():
            model = base_dir / model
        self.model, self.data = model, (base_dir / recipe.data) if recipe.data else None
        self.model_key = input_key(resolve(model) if model is not None else None)
        self.data_key = input_key(self.data)


def run_recipe(recipe: Recipe, base_dir: Path | None = None, registry: RunRecorder | None = None,
               log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run every step (skipping cached ones) and return a summary: each step's record, the final model
    and, for `evaluate` steps, `evaluation: {model ref: {"tasks": ...}}`."""
    base_dir = base_dir or Path.cwd()
    registry = registry or NullRecorder()
    workdir = Path(recipe.workdir).expanduser() if recipe.workdir else lmopt_home() / "steps"
    workdir = workdir if workdir.is_absolute() else base_dir / workdir
    state = _State(recipe, base_dir)
    summary: dict[str, Any] = {"recipe": recipe.name, "input": str(state.model), "steps": []}
    steps = recipe.step_list()
    for i, (name, raw) in enumerate(steps):
        step = get_step(name)
        config = step.parse(raw, where=f"steps.{i}.{name}")
        key = step_key(name, config, state.model_key, state.data_key)
        out = workdir / f"{i:02d}-{name}-{key}"
        record = _cached(out) if step.cache else None
        if record is None:
            log(f"[{i + 1}/{len(steps)}] {name} ({key})")
            record = _run_step(step, config, key, out, state, recipe, base_dir, log)
            _record(registry, step, record, config)
        else:
            log(f"[{i + 1}/{len(steps)}] {name} ({key}): cached")
        if name == "evaluate":
            summary.setdefault("evaluation", {})[record["input"]] = {"tasks": record["metrics"]}
        if record["model"]:
            state.model, state.model_key = Path(record["model"]), key
        if record["data"]:
            state.data, state.data_key = Path(record["data"]), key
        summary["steps"].append(record)
    summary["output"] = str(state.model)
    if recipe.output and state.model is not None and Path(str(state.model)).is_dir():
        dest = Path(recipe.output).expanduser()
        dest = dest if dest.is_absolute() else base_dir / dest
        source = Path(str(state.model))
        atomic_directory(dest, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))
        summary["output"] = str(dest)
    return summary


def _run_step(step: Step, config: Any, key: str, out: Path, state: _State, recipe: Recipe,
              base_dir: Path, log: Callable[[str], Any]) -> dict[str, Any]:
    ctx = StepContext(model=state.model, data=state.data, output=out / "artifact",
                      data_dir=Path(recipe.data_dir) if recipe.data_dir else None, base_dir=base_dir,
                      dtype=recipe.dtype, log=lambda line: log(f"  {line}"))
    started = time.time()
    shutil.rmtree(out, ignore_errors=True)  # a half-finished earlier attempt
    out.mkdir(parents=True)
    result: StepResult = step.run(ctx, config)
    record = {"step": step.name, "key": key, "input": str(state.model), "input_hash": result.model_hash,
              "config": config.to_dict(), "metrics": result.metrics,
              "model": str(result.model) if result.model else None,
              "data": str(result.data) if result.data else None,
              "seconds": round(time.time() - started, 2)}
    write_json(out / DONE_MARK, record)
    return record


def _record(registry: RunRecorder, step: Step, record: dict[str, Any], config: Any) -> None:
    """One registry row per step (per task for evaluations), and every model directory a step saved
    registered with its lineage and figures; training histories stay out."""
    metrics = {k: v for k, v in record["metrics"].items() if k != "history"}
    if record["model"] and Path(record["model"]).is_dir():
        figures = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        registry.register_model(record["model"], figures=figures)
    fields = {"model_hash": record["input_hash"], "config": config.to_dict()}
    if step.per_task:
        for task, figures in metrics.items():
            registry.record(step.name, record["input"], figures, task=task, **fields)
    else:
        registry.record(step.name, record["input"], metrics, **fields)


def _cached(out: Path) -> dict[str, Any] | None:
    mark = out / DONE_MARK
    return json.loads(mark.read_text()) if mark.exists() else None
