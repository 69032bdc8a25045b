"""Tiny-model trials run single-threaded: on a busy machine two intra-op threads make a 2-layer model's
forward pass several times slower, and the tests measure no speed."""

import os

import pytest


@pytest.fixture(autouse=True)
def one_thread(request, monkeypatch):
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv("LMOPT_THREADS", "1")
    yield
    if "LMOPT_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
