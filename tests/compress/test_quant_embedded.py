"""Integration: GPTQ and AWQ on real layers of the embedded SmolLM2-135M, and the int4 kernel on its
576-wide shapes with groups of 128 (a 64-wide last group)."""

from __future__ import annotations

import pytest
import torch

from lmopt.compress.calibration import calibration_windows, capture_layer_inputs, collect_linear_inputs
from lmopt.compress.quantize import QuantLinear
from lmopt.compress.quantize import algorithms as alg

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def layer0_inputs(embedded):
    """Real inputs of layer 0's Linears: 4 windows x 128 tokens of the default calibration mix."""
    model = embedded.model
    windows = calibration_windows(embedded.tokenizer, n_samples=4, seq_len=128)
    inputs = capture_layer_inputs(model, windows, batch_size=4)
    xs: dict[str, torch.Tensor] = {}
    collect_linear_inputs(model.model.layers[0], inputs,
                          lambda name, _m, x: xs.__setitem__(name, x.reshape(-1, x.shape[-1]).float()))
    return xs


@pytest.mark.parametrize("name", ["self_attn.q_proj", "mlp.down_proj"])
def test_gptq_and_awq_beat_rtn_on_real_layer(embedded, layer0_inputs, name):
    w = embedded.model.model.layers[0].get_submodule(name).weight.data
    x = layer0_inputs[name]
    h, _ = alg.accumulate_hessian(None, 0, x)
    rtn = alg.output_error(x, w, alg.rtn_quantize(w, 4, 128).dequantize())
    gptq = alg.output_error(x, w, alg.gptq_quantize(w, h, 4, 128, act_order=True).dequantize())
    scales, _ = alg.awq_search_scales(x.abs().mean(0), h, [w], 4, 128)
    awq = alg.output_error(x, w, alg.rtn_quantize(w * scales, 4, 128).dequantize() / scales)
    assert gptq < 0.8 * rtn and awq <= rtn


def test_int4_kernel_on_real_shape(embedded, layer0_inputs):
    w = embedded.model.model.layers[0].mlp.gate_proj.weight.data  # (1536, 576)
    qw = alg.rtn_quantize(w, 4, 128)
    layer = QuantLinear.from_codes(qw.q, qw.scale, qw.zero, 4, 128)
    x = layer0_inputs["mlp.gate_proj"][:8].bfloat16()
    reference = layer(x.float())
    assert layer.prepare("auto") == "int4" and layer._kernel["group"] == 64
    torch.testing.assert_close(layer(x).float(), reference, rtol=0.02, atol=0.05)
