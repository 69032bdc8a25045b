"""Study plots as PNG files: optimization history (with the best-so-far line) and parameter importances.

Drawn with `optuna.visualization.matplotlib` on the headless Agg backend. Importances use Optuna's
PED-ANOVA evaluator, which needs no scikit-learn (the default fANOVA one does). A plot that cannot be
drawn yet (e.g. importances before two finished trials) is skipped, never an error.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState
from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

from lmopt.io import atomic_path


def _save(ax: Any, path: Path) -> Path:
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure  # one axes, or a grid of them
    fig.set_size_inches(8, 5)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a reader never sees half an image
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _finished(study: Any) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def save_plots(study: Any, output: Path, objectives: list[str]) -> dict[str, str]:
    """Write history.png (one per objective) and importances.png; return {plot name: file name}."""
    matplotlib.use("Agg", force=False)
    written: dict[str, str] = {}
    if _finished(study) == 0:
        return written
    multi = len(objectives) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is flagged experimental
        for i, name in enumerate(objectives):
            target = (lambda t, i=i: t.values[i]) if multi else None
            ax = plot_optimization_history(study, target=target, target_name=name)
            fname = "history.png" if i == 0 else f"history-{i}.png"
            written[f"history {name}"] = _save(ax, output / fname).name
        if _finished(study) >= 2 and study.get_trials(deepcopy=False)[0].params:
            try:
                target = (lambda t: t.values[0]) if multi else None
                ax = plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=target,
                                            target_name=objectives[0])
                written["importances"] = _save(ax, output / "importances.png").name
            except (RuntimeError, ValueError):  # too few distinct trials to rank parameters
                pass
    return written


def importances(study: Any, objective_index: int = 0, multi: bool = False) -> dict[str, float]:
    """Parameter importances (PED-ANOVA, normalized to sum 1); {} when they cannot be computed yet."""
    if _finished(study) < 2:
        return {}
    target = (lambda t: t.values[objective_index]) if multi else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=target)
    except (RuntimeError, ValueError):
        return {}
