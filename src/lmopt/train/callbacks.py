"""Hooks into a training run: see every validation result and every log line, and stop the run.

A callback is either a plain function `on_eval(step: int, metrics: dict) -> bool | None` or an object
with `on_eval(step, metrics)` and/or `on_log(step, metrics)` methods. `metrics` of an evaluation holds
`eval_loss` (token-weighted validation cross-entropy), `eval_ppl`, `eval_tokens`, `step`, `epoch`,
`tokens` and `train_loss`; a log line (every `log_every` steps) holds `loss`, `lr`, `tokens_per_s` and
`train_seconds`. Returning True from `on_eval` (or `on_log`) asks the run to stop there: it ends
normally, with the best weights so far, and `TrainResult.stopped == "callback"`. The final evaluation
at the end of a run is reported too, but its return value is ignored. Exceptions propagate (raising
`optuna.TrialPruned` from a callback also works, but then no result is returned).

Optuna pruning in three lines:

    def on_eval(step, metrics):
        trial.report(metrics["eval_loss"], step)
        return trial.should_prune()
    finetune(model, data, config, callbacks=[on_eval])
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

Callback = Callable[[int, dict[str, Any]], Any] | Any


class Callbacks:
    """A list of callbacks called in order, plus a one-line console log unless LMOPT_QUIET=1."""

    def __init__(self, callbacks: Callback | Iterable[Callback] | None = None, label: str = "train") -> None:
        if callbacks is None:
            callbacks = []
        elif callable(callbacks) or hasattr(callbacks, "on_eval") or hasattr(callbacks, "on_log"):
            callbacks = [callbacks]
        self.items = list(callbacks)
        self.label = label
        self.quiet = os.environ.get("LMOPT_QUIET") == "1"

    def eval(self, step: int, metrics: dict[str, Any]) -> bool:
        """Report an evaluation to every callback; True if any asked to stop."""
        self._print(step, {k: metrics[k] for k in ("eval_loss", "eval_ppl") if k in metrics})
        stop = False
        for cb in self.items:
            fn = getattr(cb, "on_eval", None) or (cb if callable(cb) and not hasattr(cb, "on_log") else None)
            if fn is not None and fn(step, dict(metrics)):
                stop = True
        return stop

    def log(self, step: int, metrics: dict[str, Any]) -> bool:
        """Report a log line to every callback with `on_log`; True if any asked to stop."""
        self._print(step, metrics)
        stop = False
        for cb in self.items:
            fn = getattr(cb, "on_log", None)
            if fn is not None and fn(step, dict(metrics)):
                stop = True
        return stop

    def _print(self, step: int, metrics: dict[str, Any]) -> None:
        if self.quiet:
            return
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
        print(f"[{self.label}] step {step}: " + ", ".join(parts), file=sys.stderr, flush=True)
