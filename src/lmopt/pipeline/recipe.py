"""Recipes: a YAML list of steps run top to bottom, each cached by the hash of its inputs and config.

```yaml
model: smollm2-135m-instruct      # any load_model reference
data: corpus.jsonl                # optional dataset the data/training steps consume
steps:                            # each item: {step-name: {config fields}}
  - quantize: {method: gptq, bits: 4, group_size: 128}
evaluate:                         # shorthand for an `evaluate` step on the final model
  tasks: [pydoc]
  limit: 8
  baseline: true                  # ... and one on the input model, before the other steps
```

A step's output lives in `<workdir>/<i>-<name>-<key>/` where key = hash(step, config, input keys); a
step whose output is complete is skipped, so an interrupted recipe resumes where it stopped. The
runner records every step's figures in the registry once (steps themselves record nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from lmopt.configs import Config, read_yaml_map
from lmopt.errors import LmoptError
from lmopt.step import get_step


class RecipeEvaluate(Config):
    """The `evaluate:` block: an `evaluate` step on the final model (and on the input one)."""

    tasks: list[str] = Field(default_factory=lambda: ["pydoc"])
    """Tasks run on the final model (see `lmopt eval --help` for names)."""
    limit: int | None = None
    """First N items / windows of each task."""
    seq_len: int = 2048
    """Perplexity window length in tokens."""
    baseline: bool = False
    """Also evaluate the recipe's input model, for a before/after table."""


class Recipe(Config):
    """A model, an optional dataset, a list of steps and the evaluations to run."""

    name: str = "recipe"
    model: str | None = None
    """The input model: alias, .gguf file, HF directory (relative to the recipe's folder) or hub id."""
    data: str | None = None
    """The input dataset file, for data and training steps."""
    data_dir: str | None = None
    """Evaluation data dir (shared/data layout)."""
    dtype: str = "auto"
    """Model dtype for steps that do not choose their own: auto (bf16 where the CPU has it), float32..."""
    workdir: str | None = None
    """Where step outputs are cached (default `$LMOPT_HOME/steps`)."""
    output: str | None = None
    """Copy the final model here when the recipe ends."""
    steps: list[dict[str, Any]] = Field(default_factory=list)
    """Each item a one-key map `{step-name: {config fields}}`."""
    evaluate: RecipeEvaluate | None = None

    def step_list(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, raw config) of every step, the `evaluate:` shorthand expanded into evaluate steps."""
        steps = []
        for i, item in enumerate(self.steps):
            if not isinstance(item, dict) or len(item) != 1:
                raise LmoptError(f"steps.{i}: each step is a one-key map {{step-name: {{config}}}}")
            ((name, raw),) = item.items()
            steps.append((name, raw or {}))
        ev = self.evaluate
        if ev is not None:
            fields = {"tasks": ev.tasks, "limit": ev.limit, "seq_len": ev.seq_len}
            if ev.baseline and steps:
                steps.insert(0, ("evaluate", dict(fields)))
            steps.append(("evaluate", fields))
        return steps

    def validate_steps(self, where: str) -> None:
        """Parse every step's config now, so a wrong field fails before any work starts."""
        for i, (name, raw) in enumerate(self.step_list()):
            get_step(name).parse(raw, where=f"{where}steps.{i}.{name}")


def load_recipe_file(path: str | Path) -> tuple[Recipe, Path]:
    """Read and fully validate a recipe; returns it and its folder (relative paths resolve there)."""
    path = Path(path)
    if not path.exists():
        raise LmoptError(f"{path}: recipe file not found")
    try:
        recipe = Recipe.parse(read_yaml_map(path), where=str(path))
        recipe.validate_steps(where=f"{path}: ")
    except LmoptError as exc:
        message = str(exc)
        raise LmoptError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    return recipe, path.resolve().parent


def one_step_recipe(step: str, config: dict[str, Any], model: str | None, **fields: Any) -> Recipe:
    """Every CLI verb is a one-step recipe built here."""
    return Recipe(name=step, model=model, steps=[{step: config}], **fields)
