"""Progress bars for long work (rich), silent when LMOPT_QUIET=1 or when nested in another bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.errors import LiveError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[..., None]


def _noop(n: int = 1, total: int | None = None) -> None:
    return None


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Advance]:
    """Yield `advance(n=1, total=None)`; shows a rich bar with elapsed time and ETA on stderr.

    `total` may be given late (on the first advance) when it is only known once work starts.
    """
    if os.environ.get("LMOPT_QUIET") == "1":
        yield _noop
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True))
    try:
        bar.start()
    except LiveError:  # already inside another bar: stay quiet rather than fail
        yield _noop
        return
    try:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, total: int | None = None) -> None:
            bar.update(task, advance=n, **({"total": total} if total else {}))

        yield advance
    finally:
        bar.stop()
