"""`plan` on this machine: calibration from microbenchmarks, checked against measured decode."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lmopt.select.calibrate import MatvecProbe, fit_overhead, load_calibration, probe_layers, probe_model
from lmopt.select.hardware_table import Target
from lmopt.select.model_shape import model_shape
from lmopt.select.plan import PlanConfig, plan


def test_overhead_line_through_two_tiny_models():
    fixed, per_layer = fit_overhead({2: 0.004, 8: 0.010})  # 1 ms per layer, 2 ms fixed
    assert fixed == pytest.approx(0.002) and per_layer == pytest.approx(0.001)
    assert fit_overhead({8: 0.003, 2: 0.004}) == (0.004, 0.0)  # noise never gives a negative slope


def test_matvec_timing_scales_to_all_matrices():
    whole = MatvecProbe(((64, 64),) * 4, "float32")
    capped = MatvecProbe(((64, 64),) * 4, "float32", max_bytes=2 * 64 * 64 * 4)
    assert len(whole.weights) == 4 and whole.scale == 1
    assert len(capped.weights) == 2 and capped.scale == 2  # times 2 of the 4 matrices and doubles it
    assert whole(passes=1) > 0 and capped() > 0
    # int4 at half a byte per weight: the cap keeps 1 of 2 matrices; a short last group (576 = 4 x 128 + 64)
    int4 = MatvecProbe(((64, 576),) * 2, "int4", max_bytes=64 * 576 * 0.5, group_size=128)
    layer = int4.weights[0]
    assert len(int4.weights) == 1 and int4.scale == 2 and (layer.bits, layer.group_size) == (4, 128)
    assert (layer.out_features, layer.in_features, layer.scales.shape[1]) == (64, 576, 5)
    int8 = MatvecProbe(((64, 576),), "int8")
    assert (int8.weights[0].bits, int8.weights[0].group_size) == (8, 576) and int8() > 0  # one scale per row


def test_probe_models_are_as_wide_as_the_model(tiny):
    probe = model_shape(probe_model(tiny.model.config, 3))
    assert (probe.layers, probe.hidden, probe.intermediate, probe.kv_heads) == (3, 64, 128, 2)
    assert probe.vocab < model_shape(tiny).vocab + 1 and model_shape(tiny).layers == 2


def test_probe_depth_follows_the_layer_size(tiny):
    small = model_shape(tiny)  # 2 thin layers: the deeper probe still gets 3, for a usable slope
    assert probe_layers(small) == (1, 3)
    wide = replace(small, matrices=((4096, 4096 * 12),) * 32, layers=32)  # 800 MB per fp32 layer
    assert probe_layers(wide) == (1, 3)
    medium = replace(small, matrices=((576, 576 * 10),) * 30, layers=30)  # 13 MB per fp32 layer
    assert probe_layers(medium) == (1, 9)


def test_plan_here_measures_and_calibrates_a_tiny_model(tiny):
    result = plan(tiny, "this", context=64, config=PlanConfig(threads=1, new_tokens=8, rounds=1,
                                                                     formats=["fp32", "bf16", "int4"]))
    for fmt in ("fp32", "bf16", "int4"):
        row = result.row(fmt)
        assert row.measured_decode_tok_s > 0 and row.estimate_at_measured > 0 and row.error_pct is not None
    assert result.target["measured"] and result.calibration["threads"] == 1
    assert set(result.calibration["efficiency"]) == {"fp32", "bf16", "int8", "int4"}  # every format timed
    assert load_calibration(1) is not None  # stored for later plans without measuring
    shape_only = plan(model_shape(tiny), "this", context=64, config=PlanConfig(threads=1, new_tokens=8, rounds=1))
    assert shape_only.calibration is not None and shape_only.row("int4").decode_tok_s_calibrated > 0
    assert shape_only.row("int4").measured_decode_tok_s is None  # no weights to run: calibrated, not measured
    again = plan(tiny, "this", context=64, config=PlanConfig(threads=1, measure=False))
    assert again.row("bf16").decode_tok_s_calibrated is not None and again.row("bf16").measured_decode_tok_s is None


def test_a_custom_target_is_never_measured(tiny):
    mine = Target("mine", "gpu", 16, 500, 50, None, None, 1.0, "mine", "mine")
    result = plan(tiny, mine, context=128, config=PlanConfig(measure=True))
    assert result.calibration is None and result.row("fp32").measured_decode_tok_s is None
    assert result.target["name"] == "mine"


@pytest.mark.integration
def test_plan_within_30_percent_of_measured_decode_of_the_embedded_model_in_every_format():
    """The goal of issue 15: the calibrated estimate for this CPU within 30% of the measured batch-1
    decode rate of the embedded model, here in fp32, bf16, int8 and int4 (lmopt's kernels, random codes).
    The calibration never runs the model (tiny models + matrix timings), so the check is out of sample;
    the pure roofline is shown beside it and is far off at batch 1."""
    result = plan("smollm2-135m-instruct", "this", context=2048, config=PlanConfig(threads=1, new_tokens=32))
    for row in result.rows:
        assert row.measured_decode_tok_s > 0
        assert abs(row.error_pct) <= 30, (row, result.calibration)
        assert row.roofline_at_measured > row.measured_decode_tok_s  # the bound is a bound
