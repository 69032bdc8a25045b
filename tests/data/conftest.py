"""Synthetic English-like documents for the data tests (distinct documents share few 3-grams)."""

from __future__ import annotations

import random

import pytest

from lmopt.data.planted import synthetic_doc


@pytest.fixture
def docs() -> list[str]:
    rng = random.Random(0)
    return [synthetic_doc(rng) for _ in range(60)]
