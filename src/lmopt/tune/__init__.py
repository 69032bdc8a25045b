"""Tune: Optuna hyperparameter search over any field of a training step's config.

`tune(recipe, SearchSpace.from_yaml("space.yaml"), TuneConfig(n_trials=20, pruner="median"))` runs a
study (resumable, shared by any number of workers through its storage URL) and returns the best
config, the kept best model, the trials table, the Pareto set and the plots. Files:

- space.py      search space from YAML (float / log-float / int / categorical over dotted fields)
- config.py     TuneConfig (budgets, sampler, pruner, storage, objectives) and TuneJob (what workers run)
- targets.py    the tunable steps (finetune, distill, toy-regression) behind one train-with-a-hook shape
- objective.py  one trial: sample, train with the pruning hook, score, keep the best model
- study.py      storage, sampler, pruner, budget, resume, local worker processes
- results.py    best config, trials table, Pareto set, report.md;  plots.py: history and importances PNGs
- tuner.py      `tune(recipe, space, config)`;  step.py: the `tune` recipe step;  cli.py: `lmopt tune`
- toy.py        a seconds-long stand-in training step (for tests and for trying a space or a pruner)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "tune": "lmopt.tune.tuner",
    "run_job": "lmopt.tune.tuner",
    "SearchSpace": "lmopt.tune.space",
    "Param": "lmopt.tune.space",
    "TuneConfig": "lmopt.tune.config",
    "TuneJob": "lmopt.tune.config",
    "TuneResult": "lmopt.tune.results",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmopt.tune' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
