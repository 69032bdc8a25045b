"""`clean(data, CleanConfig(engine="ray"))`: the cleaning pipeline on Ray Data, equal to the local one row for row.

Stages (Ray Data operators, streaming with backpressure; "groupby" is a shuffle by key):
1. read: input shards (`ray_read`) -> raw records in source order.
2. process (`ray_process`): `clean.process_record` on every document, `workers` at a time: filters,
   PII, exact key, MinHash signature. With at least as many shards as workers one actor per worker
   reads and processes whole shards; with fewer, reading runs in tasks of its own and processing
   tasks share its blocks.
   Materialized: Ray's object store spills to disk past its memory.
3. candidates, as scaled MinHash dedup finds them: each live document goes into one bucket per LSH band
   (bucket = hash(band index, band values)) and one for its exact key; a shuffle by bucket (by bucket
   mod a group count, so each group is one vectorized call) gives edges from each bucket's first
   document to the others; the driver keeps the distinct edges and labels their
   connected components (scipy). Only documents sharing a bucket with another are in that graph.
4. verdicts: groupby(component) runs the local engine's streaming dedup (exact keys, then
   `NearDeduper`) over each component in source order. A document's verdict depends only on earlier
   documents sharing its key or a band, all in its component, so every verdict and the line it names
   are the local engine's (each cluster keeps its first document).
5. write: the driver merges the processed rows (source order) with the verdicts (sorted by order),
   fills the report and writes the kept rows, as the local engine does.
Memory: per worker, a block (`BLOCK_BYTES`) and a chunk; in the driver, one batch plus the candidate graph
(16 bytes per distinct edge, up to 1 + bands edges per document that shares a bucket; briefly more while
edges are deduplicated) and the verdicts (about 17 bytes per duplicate). Processed rows wait in Ray's
object store (spilled to disk past its memory), and each component is deduplicated whole by one task.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lmopt.data.clean import CleanResult, DocFigures, account
from lmopt.data.config import CleanConfig
from lmopt.data.decontaminate import EvalIndex
from lmopt.data.load import BadRows
from lmopt.data.ray_dedup import EXACT, NEAR, verdicts
from lmopt.data.ray_process import process
from lmopt.data.ray_read import plan_shards
from lmopt.data.report import CleanReport
from lmopt.errors import LmoptError, missing_dependency
from lmopt.io import atomic_open

BLOCK_BYTES = 8 << 20
ROWS_PER_PARTITION = 200_000
HASH_SHUFFLE_ROWS = 1_000_000
REASONS = {EXACT: "exact_duplicate", NEAR: "near_duplicate"}


def clean_on_ray(data: Any, cfg: CleanConfig, report: CleanReport, index: EvalIndex | None,
                 output: str | Path | None) -> CleanResult:
    """Run `clean` on Ray (see the module docstring); `report` and `index` come from `clean`."""
    with _quiet_ray(), _cluster(cfg) as workers, _data_context():
        shards = plan_shards(data, cfg.text_field, workers)
        processed = process(shards, cfg, index, workers, as_json=output is not None).materialize()
        rows_in = processed.count()
        _pick_shuffle(processed, rows_in)
        dups = verdicts(processed, cfg.dedup, max(workers, rows_in // ROWS_PER_PARTITION))
        rows = _write(processed, dups, cfg, report, output, BadRows(source=str(data)))
    return CleanResult(report, rows, Path(output) if output else None)


# --- cluster -------------------------------------------------------------------------------------------

@contextmanager
def _cluster(cfg: CleanConfig) -> Iterator[int]:
    """Ray initialized (a local cluster, `cfg.address`, or the one this process has joined); yields workers."""
    try:
        import ray  # lazy: optional dependency
        import ray.data  # noqa: F401  (lazy: Ray Data is the `data` extra of ray)
    except ImportError:
        raise missing_dependency("ray[data]", extra="ray") from None
    started = not ray.is_initialized()
    if started:
        options = {"log_to_driver": False, "logging_level": logging.WARNING, "include_dashboard": False}
        if cfg.address is None:
            ray.init(num_cpus=cfg.workers or None, **options)
        else:
            _check_address(cfg.address)
            try:
                ray.init(address=cfg.address, **options)
            except Exception as exc:  # ConnectionError ('auto' found none), ValueError (ray:// without the client)
                raise LmoptError(f"address '{cfg.address}': could not join the Ray cluster "
                                 f"({(str(exc).splitlines() or [type(exc).__name__])[0]}; a cluster with "
                                 "token authentication, "
                                 "Ray's default, needs RAY_AUTH_MODE=token here)") from None
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        yield min(cfg.workers or cpus, cpus)
    finally:
        if started:
            ray.shutdown()


def _check_address(address: str) -> None:
    """Fail in one line, within seconds, when nothing listens at a HOST:PORT address (Ray retries for minutes)."""
    if address == "auto":
        return
    client = address.startswith("ray://")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        host, port = address.removeprefix("ray://"), "10001" if client else "6379"
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise LmoptError(f"address '{address}': no Ray cluster answers at {host}:{port} "
                         f"({exc.strerror or type(exc).__name__}); start one (`ray start --head`) or fix "
                         "the address") from None


@contextmanager
def _quiet_ray() -> Iterator[None]:
    """Ray's warnings about its own settings (deprecated context fields it sets itself, fewer inputs
    than workers) are not the user's to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`\w+` is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
        yield


@contextmanager
def _data_context() -> Iterator[None]:
    """Ray Data settings for this run (source order kept, small blocks, quiet), restored afterwards."""
    import ray.data  # lazy: optional dependency

    ctx, log = ray.data.DataContext.get_current(), logging.getLogger("ray.data")
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.target_max_block_size,
             log.level)
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
    ctx.target_max_block_size = BLOCK_BYTES  # several blocks per shard: the workers share a big shard
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.target_max_block_size) = saved[:3]
        log.setLevel(saved[3])


def _pick_shuffle(processed: Any, rows: int) -> None:
    """The sort-based shuffle below `HASH_SHUFFLE_ROWS` rows: Ray's default hash shuffle starts aggregator
    actors first, seconds that pay off only on big inputs (8 s against 16 s for a 100-row run, 2 CPUs).
    Set on the dataset's own context, which the datasets derived from it inherit."""
    from ray.data.context import ShuffleStrategy  # lazy: optional dependency

    if rows < HASH_SHUFFLE_ROWS:
        processed.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


# --- write -----------------------------------------------------------------------------------------------

def _write(processed: Any, dups: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: CleanConfig,
           report: CleanReport, output: str | Path | None, bad: BadRows) -> list[dict[str, Any]] | None:
    """Merge the processed rows (source order) with the duplicate verdicts (sorted): report and write."""
    from lmopt.progress import progress_bar  # lazy: as in clean

    rows: list[dict[str, Any]] | None = [] if output is None else None
    dup_order, dup_code, dup_of = dups
    next_dup, last = 0, -1
    next_order = int(dup_order[0]) if len(dup_order) else -1
    with ExitStack() as stack, progress_bar("clean", None) as advance:
        kept = stack.enter_context(atomic_open(output)) if output else None
        removed = stack.enter_context(atomic_open(Path(output).parent / "removed.jsonl")) \
            if output and cfg.keep_removed else None
        for batch in processed.iter_batches(batch_format="numpy", batch_size=4 * cfg.chunk_size):
            for i, order in enumerate(batch["order"].tolist()):
                if order <= last:
                    raise RuntimeError("ray engine: processed rows out of source order")  # a bug, not input
                last, line = order, int(batch["line"][i])
                if batch["bad"][i]:
                    bad.add(line, batch["bad"][i])
                    continue
                reason, detail = batch["reason"][i] or None, batch["detail"][i] or None
                if order == next_order:
                    reason, detail = REASONS[int(dup_code[next_dup])], f"of line {int(dup_of[next_dup])}"
                    next_dup += 1
                    next_order = int(dup_order[next_dup]) if next_dup < len(dup_order) else -1
                pii = batch["pii"][i]
                fig = DocFigures(line, int(batch["words_before"][i]), int(batch["words_after"][i]),
                                 int(batch["boilerplate"][i]), bool(batch["normalized"][i]),
                                 json.loads(pii) if pii else {}, batch["snippet"][i])
                account(report, fig, reason, detail)
                row = batch["row"][i]
                if reason is None:
                    rows.append(pickle.loads(row)) if rows is not None else kept.write(row + "\n")
                elif removed is not None:
                    removed.write(f'{{"reason": {json.dumps(reason, ensure_ascii=False)}, '
                                  f'"detail": {json.dumps(detail, ensure_ascii=False)}, '
                                  f'"line": {line}, "row": {row}}}\n')
            advance(int((batch["bad"] == "").sum()))
    if next_dup != len(dup_order):
        raise RuntimeError("ray engine: a duplicate verdict matched no row")  # a bug, not input
    report.bad_rows = bad.to_dict()
    return rows
