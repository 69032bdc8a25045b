"""Order-preserving, bounded parallel map over chunks of a stream (constant memory on any corpus).

`multiprocessing.Pool.imap` would read the whole input ahead of the workers; here at most
`2 * workers` chunks are in flight. Workers are forked where the platform can (Linux, macOS with
fork available): spawned workers re-import the caller's `__main__`, which breaks scripts and
notebooks without an `if __name__ == "__main__":` guard. The workers only run numpy and regexes,
never torch, so the parent's torch threads are not a hazard to them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """One worker per usable CPU core, at most `MAX_DEFAULT_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def map_chunks(fn: Callable[[list[T]], R], items: Iterable[T], chunk_size: int, workers: int = 0,
               initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[R]:
    """Yield `fn(chunk)` for consecutive chunks of `items`, in order; `workers`: 0 = auto, 1 = in process."""
    workers = workers or default_workers()
    chunks = chunked(items, chunk_size)
    if workers == 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, chunks)
        return
    pending: deque[Future] = deque()
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=initializer,
                             initargs=initargs) as pool:
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

