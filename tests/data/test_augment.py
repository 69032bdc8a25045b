"""Augmentation: EDA edits do what they say, originals kept and marked, copies of the source dropped."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lmopt.data.augment import (
    _shingles,
    augment,
    jaccard,
    model_paraphraser,
    random_delete,
    random_insert,
    random_swap,
)
from lmopt.data.config import AugmentConfig
from lmopt.errors import LmoptError

TEXT = "The quick brown fox jumps over the lazy dog.\nThen it runs away into the deep forest."


def test_eda_edits_keep_lines_and_words():
    rng = random.Random(0)
    swapped = random_swap(TEXT, 0.1, rng)
    assert Counter(swapped.split()) == Counter(TEXT.split()) and swapped != TEXT
    assert swapped.count("\n") == 1
    deleted = random_delete(TEXT, 0.3, rng)
    assert set(deleted.split()) <= set(TEXT.split()) and len(deleted.split()) < len(TEXT.split())
    inserted = random_insert(TEXT, 0.1, rng)
    assert len(inserted.split()) > len(TEXT.split()) and inserted.count("\n") == 1
    assert random_delete("one", 0.9, rng) == "one"


def test_originals_kept_and_duplicates_dropped():
    result = augment([TEXT, "short one"], AugmentConfig(per_row=3, seed=1))
    originals = [r for r in result.rows if r["augmentation"] == "original"]
    assert [r["text"] for r in originals] == [TEXT, "short one"]
    new = [r for r in result.rows if r["augmentation"] != "original"]
    assert all(r["source_line"] in (1, 2) for r in new)
    texts = [r["text"] for r in result.rows]
    assert len(texts) == len(set(texts))  # no augmentation repeats its source or a sibling
    assert sum(result.made.values()) == len(new) and sum(result.dropped.values()) == 2 * 3 * 3 - len(new)
    assert result.rows_out == len(result.rows)


def test_paraphrase_needs_a_model_and_runs_with_tiny(tiny_dir):
    with pytest.raises(LmoptError, match="needs a model"):
        augment([TEXT], AugmentConfig(methods=["paraphrase"]))
    cfg = AugmentConfig(methods=["paraphrase"], per_row=2, max_new_tokens=8, dedup_threshold=1.0)
    result = augment([TEXT], cfg, model=str(tiny_dir))
    assert result.rows[0]["augmentation"] == "original"
    assert result.made.get("paraphrase", 0) + result.dropped.get("paraphrase", 0) == 2


@pytest.mark.integration
def test_paraphrase_with_embedded_model():
    """Each sampled draft is kept exactly when the documented rule says (non-empty, Jaccard of word
    bigrams to the source and to kept siblings below the threshold). At per_row=1 the 135M model's only
    draft was a verbatim copy, dropped every time, so the content check used to be skipped: 3 draws."""
    source = "The meeting was moved from Monday to Friday because the room was booked."
    cfg = AugmentConfig(methods=["paraphrase"], per_row=3, max_new_tokens=24, temperature=0.7)
    drafts = model_paraphraser("smollm2-135m-instruct", cfg)(source, 3)  # the same seeded draws augment makes
    result = augment([source], cfg, model="smollm2-135m-instruct")
    expected, seen = [], [_shingles(source)]
    for draft in drafts:
        if draft.strip() and all(jaccard(_shingles(draft), s) < cfg.dedup_threshold for s in seen):
            expected.append(draft)
            seen.append(_shingles(draft))
    para = [r["text"] for r in result.rows if r["augmentation"] == "paraphrase"]
    assert para == expected and len(para) >= 1
    assert result.made.get("paraphrase", 0) + result.dropped.get("paraphrase", 0) == 3
    for text in para:  # a real paraphrase shares content words with its source
        assert {"meeting", "friday", "monday"} & set(text.lower().replace(".", " ").split()), text


def test_chat_preamble_is_stripped():
    from lmopt.data.augment import _strip_preamble

    assert _strip_preamble("Sure, here's a paraphrase:\n\nThe cat sat.") == "The cat sat."
    assert _strip_preamble("The ratio was 2:1 in the end.") == "The ratio was 2:1 in the end."
