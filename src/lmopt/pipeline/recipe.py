"""Recipes: a YAML list of steps run top to bottom, each cached by the hash of its inputs and config.

```yaml
model: smollm2-135m-instruct      # any load_model reference
data: corpus.jsonl                # optional dataset the data/training steps consume
steps:                            # each item: {step-name: {config fields}}
  - quantize: {method: gptq, bits: 4, group_size: 128}
evaluate:                         # measured on the final model (and the input one if baseline)
  tasks: [pydoc]
  limit: 8
  baseline: true
```

A step's output lives in `<workdir>/<key>/` where key = hash(step, config, input keys); a step whose
output is already complete is skipped, so an interrupted recipe resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from lmopt.configs import Config
from lmopt.errors import LmoptError
from lmopt.pipeline.steps import StepContext, StepResult, get_step
from lmopt.settings import lmopt_home

DONE_MARK = "step.json"


class RecipeEvaluate(Config):
    tasks: list[str] = Field(default_factory=lambda: ["pydoc"])
    """Tasks run on the final model (see `lmopt eval --help` for names)."""
    limit: int | None = None
    """First N items / windows of each task."""
    seq_len: int = 2048
    baseline: bool = False
    """Also evaluate the recipe's input model, for a before/after table."""


class Recipe(Config):
    """A model, an optional dataset, a list of steps and the evaluations to run."""

    name: str = "recipe"
    model: str | None = None
    data: str | None = None
    data_dir: str | None = None
    dtype: str = "auto"
    workdir: str | None = None
    """Where step outputs are cached (default `$LMOPT_HOME/steps`)."""
    output: str | None = None
    """Copy the final model here when the recipe ends."""
    steps: list[dict[str, Any]] = Field(default_factory=list)
    evaluate: RecipeEvaluate | None = None

    @classmethod
    def load(cls, path: str | Path) -> tuple[Recipe, Path]:
        recipe = cls.from_yaml(path)
        for i, item in enumerate(recipe.steps):
            if not isinstance(item, dict) or len(item) != 1:
                raise LmoptError(f"{path}: steps.{i}: each step is a one-key map {{step-name: {{config}}}}")
            (name, cfg), = item.items()
            get_step(name).parse(cfg, where=f"{path}: steps.{i}.{name}")  # validate up front
        return recipe, Path(path).resolve().parent


def _input_key(ref: Path | str | None) -> str:
    if ref is None:
        return "none"
    path = Path(ref)
    if path.is_dir():
        from lmopt.models.card import content_hash

        return content_hash(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return str(ref)


def step_key(name: str, config: Config, model_key: str, data_key: str) -> str:
    blob = json.dumps([name, config.fingerprint(), model_key, data_key])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_recipe(recipe: Recipe, base_dir: Path | None = None, registry: Any = None,
               log: Any = print) -> dict[str, Any]:
    """Run every step (skipping cached ones), then the evaluations; return a summary dict."""
    base_dir = base_dir or Path.cwd()
    workdir = Path(recipe.workdir).expanduser() if recipe.workdir else lmopt_home() / "steps"
    if not workdir.is_absolute():
        workdir = base_dir / workdir
    data_dir = Path(recipe.data_dir) if recipe.data_dir else None
    model: Path | str | None = recipe.model
    if model is not None and (base_dir / model).exists():
        model = base_dir / model
    data = (base_dir / recipe.data) if recipe.data else None
    model_key, data_key = _input_key(_resolved(model)), _input_key(data)
    summary: dict[str, Any] = {"recipe": recipe.name, "input": str(model), "steps": []}
    for i, item in enumerate(recipe.steps):
        (name, raw), = item.items()
        spec = get_step(name)
        config = spec.parse(raw, where=f"steps.{i}.{name}")
        key = step_key(name, config, model_key, data_key)
        out = workdir / f"{i:02d}-{name}-{key}"
        record = _cached(out)
        if record is None:
            log(f"[{i + 1}/{len(recipe.steps)}] {name} ({key})")
            ctx = StepContext(model=model, data=data, output=out / "artifact", data_dir=data_dir,
                              registry=registry, base_dir=base_dir, dtype=recipe.dtype)
            started = time.time()
            shutil.rmtree(out, ignore_errors=True)  # a half-finished earlier attempt
            out.mkdir(parents=True)
            result: StepResult = spec.run(ctx, config)
            record = {"step": name, "key": key, "config": config.to_dict(), "metrics": result.metrics,
                      "model": str(result.model) if result.model else None,
                      "data": str(result.data) if result.data else None,
                      "seconds": round(time.time() - started, 2)}
            (out / DONE_MARK).write_text(json.dumps(record, indent=2))
        else:
            log(f"[{i + 1}/{len(recipe.steps)}] {name} ({key}): cached")
        if record["model"]:
            model, model_key = Path(record["model"]), key
        if record["data"]:
            data, data_key = Path(record["data"]), key
        summary["steps"].append(record)
    summary["output"] = str(model)
    if recipe.output and model is not None and Path(str(model)).is_dir():
        dest = Path(recipe.output) if Path(recipe.output).is_absolute() else base_dir / recipe.output
        from lmopt.models.save import atomic_directory

        atomic_directory(dest, lambda tmp: shutil.copytree(model, tmp, dirs_exist_ok=True))
        summary["output"] = str(dest)
    if recipe.evaluate is not None and model is not None:
        summary["evaluation"] = _evaluate(recipe, model, data_dir, registry, log)
    return summary


def _resolved(model: Path | str | None) -> Path | str | None:
    if model is None:
        return None
    from lmopt.models.load import resolve

    return resolve(model)


def _cached(out: Path) -> dict[str, Any] | None:
    mark = out / DONE_MARK
    return json.loads(mark.read_text()) if mark.exists() else None


def _evaluate(recipe: Recipe, model: Path | str, data_dir: Path | None, registry: Any,
              log: Any) -> dict[str, Any]:
    from lmopt.evaluate import evaluate_model

    ev = recipe.evaluate
    refs = ([recipe.model] if ev.baseline and recipe.model != str(model) else []) + [str(model)]
    results = {}
    for ref in refs:
        log(f"evaluate {ref}: {', '.join(ev.tasks)}")
        results[ref] = evaluate_model(ref, ev.tasks, limit=ev.limit, seq_len=ev.seq_len,
                                      data_dir=data_dir, dtype=recipe.dtype, registry=registry)
    return results


def load_recipe_file(path: str | Path) -> tuple[Recipe, Path]:
    if not Path(path).exists():
        raise LmoptError(f"{path}: recipe file not found")
    return Recipe.load(path)


def one_step_recipe(step: str, config: dict[str, Any], model: str | None, **fields: Any) -> Recipe:
    """Every CLI verb is a one-step recipe built here."""
    return Recipe(name=step, model=model, steps=[{step: config}], **fields)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
