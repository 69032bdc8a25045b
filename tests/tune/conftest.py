"""Tiny-model trials run single-threaded: on a busy machine two intra-op threads make a 2-layer model's
forward pass several times slower, and these tests measure no speed. Torch's setting is restored after."""

import pytest


@pytest.fixture(autouse=True)
def one_thread(request, monkeypatch):
    import torch

    before = torch.get_num_threads()
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv("LMOPT_THREADS", "1")
    yield
    torch.set_num_threads(before)
