"""clean() end to end: planted problems removed with the right reason, parallel = serial, reports."""

from __future__ import annotations

import json
import random

import pytest

from lmopt.data.clean import clean
from lmopt.data.config import CleanConfig
from lmopt.data.planted import plant, synthetic_doc


@pytest.fixture
def corpus(docs, tmp_path):
    rng = random.Random(2)
    items = [synthetic_doc(rng, sentences=2) for _ in range(10)]
    task = tmp_path / "eval.txt"
    task.write_text("\n\n".join(items))
    planted = plant(docs, items, rng, exact=8, near=8, pii=8, contaminated=5, junk_docs=6, edit_rate=0.02)
    return planted, str(task)


def test_planted_problems_are_removed_with_reasons(corpus):
    planted, task = corpus
    cfg = CleanConfig(workers=1, pii={"enabled": True}, decontaminate=[task], quality={"min_words": 20})
    result = clean([{"text": r["text"], "id": r["id"]} for r in planted.rows], cfg)
    kept = {row["id"]: row for row in result.rows}
    kinds = {r["id"]: r["kind"] for r in planted.rows}
    assert not any(kinds[i] in ("contaminated", "junk") for i in kept)
    for source in {r["source"] for r in planted.rows if r["kind"] in ("exact_copy", "near_copy")}:
        assert sum(1 for r in planted.rows if r["source"] == source and r["id"] in kept) == 1
    values = [v for vals in planted.pii.values() for _, v in vals]
    assert values and not any(v in row["text"] for row in kept.values() for v in values)
    assert all("<" in kept[i]["text"] for i in planted.pii)
    rep = result.report
    # a near copy that drew no edit is an exact copy
    assert rep.removed["exact_duplicate"] >= 8
    assert rep.removed["exact_duplicate"] + rep.removed["near_duplicate"] == 16
    assert sum(n for r, n in rep.removed.items() if r.startswith("decontaminate")) == 5
    assert rep.rows_in == len(planted.rows) and rep.rows_out == len(kept)
    assert [s["filter"] for s in rep.stage_counts()][0] == "empty"
    assert rep.stage_counts()[-1]["out"] == rep.rows_out


def test_parallel_equals_serial_and_bad_rows_reported(corpus, tmp_path):
    planted, _ = corpus
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": r["text"], "id": r["id"]}) for r in planted.rows]
    lines.insert(3, "{not json")
    lines.insert(10, json.dumps({"body": "no text field"}))
    path.write_text("\n".join(lines) + "\n")
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}.jsonl"
        cfg = CleanConfig(workers=workers, chunk_size=7, quality={"min_words": 20}, keep_removed=True)
        result = clean(path, cfg, output=out, report_dir=tmp_path / f"rep{workers}")
        outs.append(out.read_text())
        assert result.report.bad_rows["total"] == 2
        assert sorted(n for v in result.report.bad_rows["lines"].values() for n in v) == [4, 11]
    assert outs[0] == outs[1]
    removed = [json.loads(line) for line in (tmp_path / "removed.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in removed} >= {"exact_duplicate", "near_duplicate"}
    assert all("line" in r and "row" in r for r in removed)
    rep = tmp_path / "rep2"
    assert (rep / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    md = (rep / "report.md").read_text()
    assert "lines 4" in md and "exact_duplicate" in md
    assert json.loads((rep / "report.json").read_text())["bad_rows"]["total"] == 2


def test_semantic_dedup_plumbing(tiny_dir, docs):
    cfg = CleanConfig(workers=1, quality={"enabled": False},
                      dedup={"mode": "semantic", "embed_model": str(tiny_dir), "semantic_threshold": 0.5})
    result = clean(docs[:4], cfg)
    # a random tiny model embeds all texts alike: the first is kept, the rest are semantic duplicates
    assert len(result.rows) == 1 and result.report.removed == {"semantic_duplicate": 3}


def test_strings_in_rows_out_and_no_dedup(docs):
    cfg = CleanConfig(workers=1, dedup={"mode": "none"})
    result = clean([docs[0], docs[0], "  " + docs[1] + "\u200b ", {"body": "no text"}], cfg)
    assert [r["text"] for r in result.rows] == [docs[0], docs[0], docs[1]]
    assert result.report.bad_rows["lines"] == {"has no text field 'text'": [4]}
    assert result.report.rows_normalized == 1
