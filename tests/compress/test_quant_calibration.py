"""The sequential calibration flow: right inputs per layer, outputs passed on, hooks see each Linear."""

from __future__ import annotations

import pytest
import torch

from lmopt.compress.calibration import (
    CalibrationConfig,
    calibrate,
    calibration_windows,
    collect_linear_inputs,
    decoder_layers,
    linear_modules,
    sequential_calibrate,
)
from lmopt.errors import LmoptError


def test_windows_shape_and_source(tiny):
    windows = calibration_windows(tiny.tokenizer, "pydoc-train", n_samples=4, seq_len=32)
    assert windows.shape == (4, 32) and windows.dtype == torch.long
    assert len({tuple(w.tolist()) for w in windows}) == 4  # distinct windows
    with pytest.raises(LmoptError, match="unknown text source"):
        calibration_windows(tiny.tokenizer, "no-such-source", 2, 16)


def test_layer_inputs_match_hidden_states(tiny):
    """Each layer's captured inputs equal the model's own hidden states at that depth."""
    windows = calibration_windows(tiny.tokenizer, n_samples=3, seq_len=24)
    with torch.no_grad():
        reference = tiny.model(input_ids=windows, output_hidden_states=True).hidden_states
    seen = {}

    def process(index, layer, inputs):
        seen[index] = torch.cat(inputs.hidden)

    sequential_calibrate(tiny.model, windows, process, batch_size=2)
    assert sorted(seen) == [0, 1]
    for index, hidden in seen.items():
        torch.testing.assert_close(hidden, reference[index], rtol=1e-5, atol=1e-5)


def test_changes_propagate_and_hooks_see_every_linear(tiny):
    """A change made to layer 0 shows in layer 1's inputs; hooks see (batch, seq, in_features)."""
    import copy

    model = copy.deepcopy(tiny.model)
    windows = calibration_windows(tiny.tokenizer, n_samples=2, seq_len=16)
    shapes, layer1 = {}, {}

    def process(index, layer, inputs):
        if index == 0:
            collect_linear_inputs(layer, inputs, lambda name, mod, x: shapes.setdefault(name, x.shape))
            layer.mlp.down_proj.weight.data.zero_()  # the MLP now adds nothing
        else:
            layer1["x"] = torch.cat(inputs.hidden)

    sequential_calibrate(model, windows, process, batch_size=2)
    assert set(shapes) == set(linear_modules(decoder_layers(model)[0]))
    assert shapes["mlp.down_proj"] == (2, 16, 128) and shapes["self_attn.q_proj"] == (2, 16, 64)
    with torch.no_grad():
        reference = model(input_ids=windows, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(layer1["x"], reference, rtol=1e-5, atol=1e-5)


def test_calibrate_with_config(tiny):
    calls = []
    calibrate(tiny.model, tiny.tokenizer, CalibrationConfig(n_samples=2, seq_len=16),
              lambda i, layer, inputs: calls.append((i, inputs.n_tokens)))
    assert calls == [(0, 32), (1, 32)]
