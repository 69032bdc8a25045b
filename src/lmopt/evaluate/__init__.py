"""Evaluation: perplexity, multiple-choice tasks and speed.

`evaluate(loaded, tasks)` runs a list of task names on a loaded model and returns
`{"model": ref, "tasks": {name: metrics}}`; `evaluate_model(ref, ...)` loads first.
Task names: `pydoc`, `wikitext2`, a text/jsonl file (perplexity); piqa, arc_easy, arc_challenge,
boolq, winogrande, openbookqa, copa, lambada, `mc:PATH` (accuracy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmopt.data.tasks import GREEDY_TASKS, MC_TASKS, load_task
from lmopt.data.text import TEXT_SOURCES, load_text
from lmopt.errors import LmoptError
from lmopt.evaluate.mc import score_items
from lmopt.evaluate.perplexity import perplexity
from lmopt.evaluate.speed import benchmark_speed
from lmopt.hardware import apply_threads
from lmopt.models import load_model
from lmopt.progress import progress_bar

__all__ = ["MC_TASKS", "benchmark_speed", "evaluate", "evaluate_model", "is_perplexity_task",
           "perplexity", "run_task"]


def is_perplexity_task(name: str) -> bool:
    return not name.startswith("mc:") and name not in MC_TASKS


def check_task(name: str) -> None:
    """Fail fast (before loading a model) on a task name that cannot run."""
    path = Path(name[3:] if name.startswith("mc:") else name).expanduser()
    if name in MC_TASKS or name in TEXT_SOURCES or name == "wikitext":
        return
    if path.suffix in (".txt", ".jsonl", ".raw", ".md") or name.startswith("mc:"):
        if not path.exists():
            raise LmoptError(f"{path}: file not found (task '{name}')")
        return
    raise LmoptError(f"unknown task '{name}' (choose {', '.join(MC_TASKS)}, pydoc, wikitext2, "
                     "a .txt/.jsonl file for perplexity, or mc:PATH)")


def run_task(loaded: Any, name: str, *, limit: int | None = None, seq_len: int = 2048,
             data_dir: str | Path | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Metrics of one task on a loaded model (with a progress bar)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    if is_perplexity_task(name):
        text = load_text(name, data_dir)
        with progress_bar(f"perplexity {name}", None) as advance:
            last = [0]

            def tick(done: int, total: int) -> None:
                advance(done - last[0], total)
                last[0] = done

            result = perplexity(model, tokenizer, text, seq_len=seq_len, limit=limit, progress=tick)
        return {"perplexity": result["perplexity"], "tokens": result["tokens"],
                "windows": result["windows"], "seq_len": result["seq_len"]}
    items = load_task(name, data_dir, limit)
    n_requests = sum(len(item.requests) for item in items)
    with progress_bar(name, n_requests) as advance:
        return score_items(model, tokenizer, items, greedy=name in GREEDY_TASKS, batch_size=batch_size,
                           max_length=min(seq_len, 4096), progress=advance)


def evaluate(loaded: Any, tasks: list[str], *, limit: int | None = None, seq_len: int = 2048,
             data_dir: str | Path | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Run every task on `loaded` (a `LoadedModel`)."""
    return {"model": loaded.ref, "tasks": {t: run_task(loaded, t, limit=limit, seq_len=seq_len,
                                                       data_dir=data_dir, batch_size=batch_size)
                                           for t in tasks}}


def evaluate_model(ref: str | Path, tasks: list[str], *, limit: int | None = None, seq_len: int = 2048,
                   data_dir: str | Path | None = None, dtype: str = "auto", batch_size: int = 8) -> dict[str, Any]:
    """Check the task names, load `ref`, evaluate it: `{"model", "tasks", "dtype", "model_hash"}`.

    Recording is the recipe runner's job (`lmopt eval` is a one-step recipe of the `evaluate` step)."""
    for task in tasks:
        check_task(task)  # before loading the model
    apply_threads()
    loaded = load_model(ref, dtype=dtype)
    results = evaluate(loaded, tasks, limit=limit, seq_len=seq_len, data_dir=data_dir, batch_size=batch_size)
    results["dtype"] = str(loaded.model.dtype).removeprefix("torch.")
    results["model_hash"] = loaded.hash
    return results
