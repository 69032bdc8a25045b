"""Decontamination: evaluation items found in training text by shared 13-grams (or whole if short)."""

from __future__ import annotations

import json

import pytest

from lmopt.data.decontaminate import build_index, eval_texts
from lmopt.errors import LmoptError

QUERY = "Which organ of the human body filters the blood and produces urine every day of the year"


@pytest.fixture
def task_file(tmp_path):
    rows = [{"query": f"Question: {QUERY}?\nAnswer:", "choices": ["kidney", "lung"], "gold": 0},
            {"query": "Question: Short one?\nAnswer:", "choices": ["yes", "no"], "gold": 1},
            {"query": "Question: What colour is a ripe banana in most shops?\nAnswer:",
             "choices": ["red", "yellow"], "gold": 1}]
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return f"mc:{path}"


def test_items_are_context_plus_gold_without_labels(task_file):
    texts = list(eval_texts(task_file))
    assert texts[0].split() == (QUERY + "? kidney").split()
    assert texts[2].split()[-1] == "yellow"


def test_match_long_and_short_items(task_file, docs):
    index = build_index([task_file], n=13, min_words=8)
    assert index.items[task_file] == 3 and index.skipped[task_file] == 1  # "Short one? no": 3 words
    assert index.match(docs[0]) is None
    pasted = docs[0] + " " + QUERY.upper().replace(" the ", ", the ") + " " + docs[1]
    assert index.match(pasted) == task_file  # case and punctuation do not hide a copy
    assert index.match(docs[0] + " what colour is a ripe banana in most shops yellow " + docs[1]) == task_file
    assert index.match(docs[0] + " what colour is a ripe banana in most shops " + docs[1]) is None
    partial = " ".join(QUERY.split()[:12])  # 12 of the 13 words: no shared 13-gram
    assert index.match(docs[0] + " " + partial) is None


def test_text_source_and_errors(tmp_path, docs):
    path = tmp_path / "eval.txt"
    path.write_text(docs[5] + "\n\n" + docs[6])
    index = build_index([str(path)])
    assert index.match("intro words here " + docs[6][:200]) == str(path)
    with pytest.raises(LmoptError, match="unknown evaluation set"):
        build_index(["no-such-task"])


def test_real_task_items_are_found(data_dir, docs):
    items = list(eval_texts("arc_easy", data_dir))[:50]
    index = build_index(["arc_easy"], data_dir)
    long_items = [t for t in items if len(t.split()) >= 8]
    assert len(long_items) == 48  # of 50 (so the check below is not vacuous)
    assert all(index.match(docs[0] + " " + t + " " + docs[1]) == "arc_easy" for t in long_items)
