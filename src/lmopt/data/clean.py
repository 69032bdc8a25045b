"""`clean(data, CleanConfig(...))`: normalize, filter, decontaminate, scrub PII and deduplicate a dataset.

Lifecycle: records stream from the reader in chunks; worker processes do the per-document work
(`process_chunk`: normalization, quality rules, decontamination, PII, hashes and MinHash
signatures); the main process applies the order-dependent deduplication (the first of a cluster is
kept), writes kept rows and fills the report. At most `2 * workers` chunks are in flight, so memory
stays constant apart from the dedup indexes.

`engine: ray` runs the same per-document work and the same deduplication on a Ray cluster
(`lmopt.data.ray_engine`), with the same output row for row.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmopt.data.config import CleanConfig
from lmopt.data.decontaminate import EvalIndex, build_index
from lmopt.data.filters import quality_reason, strip_boilerplate
from lmopt.data.load import BadRows, Record, RecordStream, open_records
from lmopt.data.normalize import canonical_words, normalize_text, word_hashes
from lmopt.data.parallel import map_chunks
from lmopt.data.pii import scrub_pii
from lmopt.data.report import SNIPPET, CleanReport
from lmopt.data.write import JsonlWriter, record_row


@dataclass(slots=True)
class Processed:
    """A record after the per-document work, with what the main process needs to deduplicate it."""

    record: Record
    words_before: int
    reason: str | None = None
    detail: str | None = None
    pii: dict[str, int] = field(default_factory=dict)
    boilerplate: int = 0
    normalized: bool = False
    key: bytes = b""
    signature: np.ndarray | None = None


_STATE: dict[str, Any] = {}  # per process: the config and evaluation index `process_chunk` uses


def init_worker(config: CleanConfig, index: EvalIndex | None) -> None:
    _STATE["config"], _STATE["index"] = config, index


def process_chunk(records: list[Record]) -> list[Processed]:
    return [process_record(rec, _STATE["config"], _STATE["index"]) for rec in records]


def process_record(rec: Record, cfg: CleanConfig, index: EvalIndex | None) -> Processed:
    """Everything about one document that does not depend on the others."""
    from lmopt.data.dedup import exact_key, minhash_signature

    out = Processed(rec, words_before=len(rec.text.split()))
    text = normalize_text(rec.text, cfg.normalize) if cfg.normalize != "none" else rec.text
    out.normalized = text != rec.text
    if cfg.quality.enabled and cfg.quality.boilerplate_lines:
        text, out.boilerplate = strip_boilerplate(text)
    rec.text = text
    if not text.strip():
        out.reason = "empty"
        return out
    if cfg.quality.enabled and (rule := quality_reason(text, cfg.quality)):
        out.reason = "quality:" + rule
        return out
    words = word_hashes(canonical_words(text))  # shared by decontamination and MinHash
    if index is not None and (name := index.match(text, words)):
        out.reason, out.detail = "decontaminate:" + name, f"shares a {index.n}-gram with {name}"
        return out
    if cfg.pii.enabled:
        rec.text, out.pii = scrub_pii(text, cfg.pii.kinds, cfg.pii.placeholder)
        if out.pii:
            words = word_hashes(canonical_words(rec.text))
    if cfg.dedup.mode != "none":
        out.key = exact_key(rec.text)
    if cfg.dedup.mode in ("near", "semantic"):
        d = cfg.dedup
        out.signature = minhash_signature(rec.text, d.ngram, d.num_perm, d.seed, words)
    return out


class _ItemRecords:
    """Records from an iterable of `Record`s, strings or dicts; items without text go to `bad`."""

    def __init__(self, items: Iterable[Any], text_field: Any) -> None:
        self.items, self.field = items, text_field if isinstance(text_field, str) else "text"
        self.bad = BadRows(source="<items>")

    def __iter__(self) -> Iterator[Record]:
        for i, item in enumerate(self.items, 1):
            if isinstance(item, Record):
                yield item
            elif isinstance(item, str):
                yield Record(item, i, {self.field: item}, (self.field,))
            elif isinstance(item, dict) and isinstance(item.get(self.field), str):
                yield Record(item[self.field], i, dict(item), (self.field,))
            else:
                self.bad.add(i, f"has no text field '{self.field}'")


def as_records(data: str | Path | Iterable[Any], text_field: Any = None) -> RecordStream | _ItemRecords:
    """A path (any `open_records` format) or an iterable of `Record`s, dicts or strings, as records."""
    if isinstance(data, str | Path):
        return open_records(data, text_field=text_field)
    return _ItemRecords(data, text_field)


@dataclass
class CleanResult:
    report: CleanReport
    rows: list[dict[str, Any]] | None = None
    """The kept rows, when no output file was given."""
    output: Path | None = None


class _Deduper:
    """The order-dependent part: exact keys, MinHash LSH, embeddings; holds the growing indexes."""

    def __init__(self, cfg: CleanConfig) -> None:
        from lmopt.data.dedup import NearDeduper, SemanticDeduper, model_embedder

        d = cfg.dedup
        self.mode, self.exact = d.mode, {}
        self.near = NearDeduper(d.threshold, d.num_perm) if d.mode in ("near", "semantic") else None
        self.semantic = SemanticDeduper(d.semantic_threshold) if d.mode == "semantic" else None
        if d.mode == "semantic" and not d.embed_model:
            from lmopt.errors import LmoptError

            raise LmoptError("dedup.embed_model: semantic deduplication needs a model to embed with")
        self.embed = model_embedder(d.embed_model) if self.semantic is not None else None

    def check(self, docs: list[Processed]) -> None:
        """Set `reason` on the duplicates among `docs` (in order) and index the rest."""
        for doc in docs:
            if doc.reason or self.mode == "none":
                continue
            if (first := self.exact.get(doc.key)) is not None:
                doc.reason, doc.detail = "exact_duplicate", f"of line {first}"
                continue
            self.exact[doc.key] = doc.record.line
            first = self.near.check(doc.signature, doc.record.line) if self.near is not None else None
            if first is not None:
                doc.reason, doc.detail = "near_duplicate", f"of line {first}"
        if self.semantic is not None:
            alive = [d for d in docs if not d.reason]
            vectors = self.embed([d.record.text for d in alive]) if alive else []
            for doc, vec in zip(alive, vectors, strict=True):
                if (first := self.semantic.check(vec, doc.record.line)) is not None:
                    doc.reason, doc.detail = "semantic_duplicate", f"of line {first}"


def clean(data: str | Path | Iterable[Any], config: CleanConfig | None = None, *,
          output: str | Path | None = None, data_dir: str | Path | None = None,
          report_dir: str | Path | None = None) -> CleanResult:
    """Clean `data` (a path or an iterable of records/dicts/strings); see the module docstring.

    With `output`, kept rows stream to that jsonl file (and removed ones, with their reason, to
    `removed.jsonl` beside it when `config.keep_removed`); otherwise they are returned in `rows`.
    """
    from lmopt.progress import progress_bar

    cfg = config or CleanConfig()
    started = time.time()
    if cfg.engine == "ray":
        from lmopt.data.ray_engine import clean_on_ray  # lazy: imports ray (optional); it imports this module

        report, index = start_report(data, cfg, data_dir)
        return _finish(clean_on_ray(data, cfg, report, index, output), started, report_dir)
    records = as_records(data, cfg.text_field)
    report, index = start_report(data, cfg, data_dir)
    dedup = _Deduper(cfg)
    rows: list[dict[str, Any]] | None = [] if output is None else None
    sinks = _Sinks(output, cfg.keep_removed)
    with sinks, progress_bar("clean", None) as advance:
        chunks = map_chunks(process_chunk, records, cfg.chunk_size, cfg.workers, init_worker, (cfg, index))
        for docs in chunks:
            dedup.check(docs)
            for doc in docs:
                account(report, figures(doc), doc.reason, doc.detail)
                row = record_row(doc.record)
                if doc.reason is None:
                    rows.append(row) if rows is not None else sinks.kept.write(row)
                elif sinks.removed is not None:
                    sinks.removed.write({"reason": doc.reason, "detail": doc.detail, "line": doc.record.line,
                                         "row": row})
            advance(len(docs))
    report.bad_rows = records.bad.to_dict()
    return _finish(CleanResult(report, rows, Path(output) if output else None), started, report_dir)


def start_report(data: Any, cfg: CleanConfig, data_dir: str | Path | None) -> tuple[CleanReport, EvalIndex | None]:
    """The empty report of a run and the evaluation index it decontaminates against (None: no sets)."""
    report = CleanReport(source=str(data) if isinstance(data, str | Path) else "<records>",
                         max_examples=cfg.examples)
    index = build_index(cfg.decontaminate, data_dir, cfg.decontaminate_ngram, cfg.decontaminate_min_words) \
        if cfg.decontaminate else None
    if index is not None:
        report.decontamination = {"sets": index.items, "skipped_short_items": index.skipped,
                                  "ngram": index.n, "ngrams_indexed": index.size}
    return report, index


def _finish(result: CleanResult, started: float, report_dir: str | Path | None) -> CleanResult:
    result.report.seconds = time.time() - started
    if report_dir is not None:
        result.report.write(report_dir)
    return result


@dataclass(slots=True)
class DocFigures:
    """What the report counts of one document (the Ray engine ships these between processes)."""

    line: int
    words_before: int
    words_after: int
    """Words of the text as processed (counted for kept rows)."""
    boilerplate: int
    normalized: bool
    pii: dict[str, int]
    snippet: str
    """The processed text cut just past the report's example length (examples of removed rows)."""


def figures(doc: Processed) -> DocFigures:
    text = doc.record.text
    return DocFigures(doc.record.line, doc.words_before, len(text.split()), doc.boilerplate, doc.normalized,
                      doc.pii, text[:SNIPPET + 1])


def account(report: CleanReport, fig: DocFigures, reason: str | None, detail: str | None) -> None:
    """Count one document (in stream order) into the report: kept, or removed for `reason`."""
    report.rows_in += 1
    report.add_length(fig.words_before, after=False)
    report.boilerplate_lines += fig.boilerplate
    report.rows_normalized += fig.normalized
    if reason is not None:
        report.remove(reason, fig.line, fig.snippet, detail)
        return
    report.rows_out += 1
    report.add_length(fig.words_after, after=True)
    if fig.pii:
        report.rows_with_pii += 1
        for kind, n in fig.pii.items():
            report.pii[kind] = report.pii.get(kind, 0) + n


class _Sinks:
    def __init__(self, output: str | Path | None, keep_removed: bool) -> None:
        self.kept = JsonlWriter(output) if output else None
        self.removed = JsonlWriter(Path(output).parent / "removed.jsonl") if output and keep_removed else None

    def __enter__(self) -> _Sinks:
        for w in (self.kept, self.removed):
            if w is not None:
                w.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for w in (self.kept, self.removed):
            if w is not None:
                w.__exit__(*exc)
