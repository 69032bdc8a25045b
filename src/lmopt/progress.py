"""Progress bars for long work (rich), silent when LMOPT_QUIET=1 or when nested in another bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; shows a rich bar with elapsed time and ETA on stderr."""
    if os.environ.get("LMOPT_QUIET") == "1":
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    try:
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
    except Exception as exc:  # rich refuses a second live display: fall back to no bar
        if "Only one live display" not in str(exc):
            raise
        yield lambda n=1: None
