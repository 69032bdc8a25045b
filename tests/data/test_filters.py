"""Normalization and the Gopher/C4 quality rules: each rule fires on the document made to break it."""

from __future__ import annotations

import pytest

from lmopt.data.config import QualityConfig
from lmopt.data.filters import detect_language, quality_reason, strip_boilerplate
from lmopt.data.normalize import canonical_words, ngram_hashes, normalize_text


def test_normalize_repairs_unicode_and_whitespace():
    raw = "Cafe\u0301\u00a0 au\u200b lait\r\n\r\n\r\n\r\nline\t\t two   \x07\n"
    assert normalize_text(raw) == "Café au lait\n\nline two"
    assert normalize_text("ﬁne", "NFKC") == "fine" and normalize_text("ﬁne") == "ﬁne"
    assert canonical_words("Hello, WORLD!  it's") == ["hello", "world", "it", "s"]


def test_ngram_hashes_are_positional_and_stable():
    words = ["a", "b", "c", "a", "b", "c"]
    h = ngram_hashes(words, 3)
    assert len(h) == 4 and h[0] == h[3] and len(set(h.tolist())) == 3
    assert ngram_hashes(["b", "a"], 2)[0] != ngram_hashes(["a", "b"], 2)[0]
    assert len(ngram_hashes(["x", "y"], 13)) == 1  # shorter than n: one n-gram of all words


def test_good_document_passes(docs):
    assert quality_reason(docs[0], QualityConfig()) is None


@pytest.mark.parametrize("text,rule", [
    ("too short but with the and of", "gopher_word_count"),
    ("#tag ... " * 60 + "the and of", "gopher_symbol_ratio"),
    ("\n".join(f"- item {i} the of and with words here" for i in range(12)), "gopher_bullet_lines"),
    (" ".join(str(i * 7919) for i in range(80)) + " the and of with", "gopher_alpha_words"),
    (" ".join(["alpha beta gamma delta"] * 30), "gopher_stop_words"),
    ("Lorem ipsum dolor sit amet " + "the cells of and " * 20, "c4_lorem_ipsum"),
])
def test_each_quality_rule_fires(text, rule):
    assert quality_reason(text, QualityConfig()) == rule


def test_repetition_rules(docs):
    lines = "\n".join([docs[1][:80]] * 6 + [docs[2]])
    assert quality_reason(lines, QualityConfig()) == "gopher_repeated_lines"
    looped = docs[3] + " " + " ".join(docs[4].split()[:30]) + " " + " ".join(docs[4].split()[:30])
    assert quality_reason(docs[4], QualityConfig()) is None  # the document alone passes
    assert quality_reason(docs[4] + " " + docs[4], QualityConfig()) == "gopher_dup_5gram"
    assert quality_reason(looped, QualityConfig()) == "gopher_dup_5gram"  # a repeated 30-word run
    assert quality_reason(looped, QualityConfig(repetition=False)) is None


def test_boilerplate_lines_and_thresholds(docs):
    text = docs[0] + "\nThis site uses cookies. Read our Privacy Policy.\nAll rights reserved 2024"
    kept, dropped = strip_boilerplate(text)
    assert kept == docs[0] and dropped == 2
    assert quality_reason("one two three the of", QualityConfig(min_words=3)) is None


def test_language_filter():
    pytest.importorskip("py3langid")
    assert detect_language("The patients were treated with the new drug for three weeks.")[0] == "en"
    german = "Die Patienten wurden drei Wochen lang mit dem neuen Medikament behandelt und untersucht."
    assert detect_language(german)[0] == "de"
    cfg = QualityConfig(min_words=3, min_stop_words=0, language="en")
    assert quality_reason(german, cfg) == "language"
    assert quality_reason("The patients were treated with the new drug for three weeks.", cfg) is None
