"""Synthetic English-like documents for the data tests (distinct documents share few 3-grams)."""

from __future__ import annotations

import random

import pytest

STOP = ["the", "of", "and", "to", "with", "that", "in", "a", "was", "for"]
NOUNS = [f"{a}{b}" for a in ("cell", "gene", "dose", "trial", "tumor", "group", "blood", "heart", "liver", "brain",
                             "bone", "skin", "lung", "renal", "serum", "tissue")
         for b in ("", "s", "al", "ic", "ity", "ome", "osis", "itis", "ase", "ine")]
VERBS = ["increased", "reduced", "showed", "measured", "compared", "predicted", "improved", "caused", "required"]


def make_doc(rng: random.Random, sentences: int = 8) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(NOUNS), rng.choice(VERBS), rng.choice(STOP), rng.choice(NOUNS), rng.choice(STOP),
                 rng.choice(NOUNS), rng.choice(STOP), rng.choice(NOUNS), rng.choice(VERBS), rng.choice(NOUNS)]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


@pytest.fixture
def docs() -> list[str]:
    rng = random.Random(0)
    return [make_doc(rng) for _ in range(60)]
