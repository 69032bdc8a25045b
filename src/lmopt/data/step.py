"""The `clean` and `augment` recipe steps: turn the recipe's dataset into a new jsonl file.

```yaml
data: corpus.jsonl
steps:
  - clean: {dedup: {mode: near, threshold: 0.8}, pii: {enabled: true}, decontaminate: [arc_easy]}
  - augment: {methods: [swap, delete], per_row: 1}
```
Each writes `data.jsonl` in its step directory (the next step's input); `clean` also writes its
report (`report/report.md`, `report.json`, `lengths.png`).
"""

from __future__ import annotations

from typing import Any

from lmopt.data.augment import augment
from lmopt.data.clean import clean
from lmopt.data.config import AugmentConfig, CleanConfig
from lmopt.errors import LmoptError
from lmopt.step import Step, StepContext, StepResult


def _input(ctx: StepContext, step: str) -> Any:
    if ctx.data is None:
        raise LmoptError(f"{step}: the recipe names no dataset (set `data:` in the recipe)")
    return ctx.data


def clean_step(ctx: StepContext, config: CleanConfig) -> StepResult:
    """Clean the dataset: normalize, quality-filter, decontaminate, scrub PII, deduplicate."""
    out = ctx.output / "data.jsonl"
    result = clean(_input(ctx, "clean"), config, output=out, data_dir=ctx.data_dir,
                   report_dir=ctx.output / "report")
    rep = result.report.to_dict()
    metrics = {k: rep[k] for k in ("rows_in", "rows_out", "removed", "pii", "filters", "seconds")}
    metrics["bad_rows"] = rep["bad_rows"].get("total", 0)
    return StepResult(data=out, metrics=metrics)


def augment_step(ctx: StepContext, config: AugmentConfig) -> StepResult:
    """Augment the dataset with EDA edits and/or model paraphrases (originals kept)."""
    model = config.model or (str(ctx.model) if ctx.model and "paraphrase" in config.methods else None)
    out = ctx.output / "data.jsonl"
    result = augment(_input(ctx, "augment"), config, output=out, model=model)
    metrics = result.to_dict()
    return StepResult(data=out, metrics=metrics)


CLEAN = Step("clean", CleanConfig, clean_step)
AUGMENT = Step("augment", AugmentConfig, augment_step)
