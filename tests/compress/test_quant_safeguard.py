"""The safeguard: GPTQ/AWQ kept per Linear group only where they beat RTN on held-out tokens."""

from __future__ import annotations

import copy

import pytest
import torch

from lmopt.compress.calibration import LayerInputs
from lmopt.compress.config import CalibrationConfig
from lmopt.compress.quantize import AWQConfig, GPTQConfig, RTNConfig, apply, quantize
from lmopt.compress.quantize import algorithms as alg
from lmopt.compress.quantize import safeguard as sg
from lmopt.compress.quantize.storage import dequantized_copy


class ToyLayer(torch.nn.Module):
    """One Linear (64 x 128); the calibration flow runs it as a decoder layer."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(128, 64, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(64, 128, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _toy_case(n_fit: int, seed: int) -> tuple[ToyLayer, torch.Tensor, torch.Tensor]:
    """Correlated inputs x = z M; `n_fit` calibration rows and 512 held-out rows of the same law."""
    gen = torch.Generator().manual_seed(100 + seed)
    mixing = torch.randn(128, 128, generator=gen)
    fit, held = torch.randn(n_fit, 128, generator=gen) @ mixing, torch.randn(512, 128, generator=gen) @ mixing
    return ToyLayer(seed), fit, held


def _holds(layer: ToyLayer, expected: alg.QuantizedWeight, other: alg.QuantizedWeight) -> None:
    """The layer holds `expected`'s rounding (its scales stored in fp16), not `other`'s."""
    torch.testing.assert_close(layer.proj.dequantize(), expected.dequantize(), rtol=2e-3, atol=2e-3)
    assert not torch.allclose(layer.proj.dequantize(), other.dequantize(), rtol=2e-3, atol=2e-3)


def _run(layer: ToyLayer, fit: torch.Tensor, held: torch.Tensor) -> dict:
    config = GPTQConfig(bits=4, group_size=32)
    _, choices = apply._gptq_layer(layer, LayerInputs([fit[None]], [{}]), config, LayerInputs([held[None]], [{}]))
    return choices["proj"]


@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_overfitting_a_tiny_calibration_set_is_replaced_by_rtn(seed):
    layer, fit, held = _toy_case(8, seed)  # 8 rows for 128 inputs: GPTQ fits noise directions
    w = layer.proj.weight.data.clone()
    choice = _run(layer, fit, held)
    rtn = alg.rtn_quantize(w, 4, 32)
    gptq = alg.gptq_quantize(w, alg.accumulate_hessian(None, 0, fit)[0], 4, 32, act_order=True)
    # brute force on the held-out rows agrees with the Hessian form (which is 2x the output MSE)
    assert alg.output_error(held, w, gptq.dequantize()) > alg.output_error(held, w, rtn.dequantize())
    assert choice["kept"] == "rtn" and choice["gptq"] > choice["rtn"]
    assert choice["rtn"] == pytest.approx(2 * alg.output_error(held, w, rtn.dequantize()), rel=1e-3)
    _holds(layer, rtn, gptq)


@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_is_kept_where_it_generalizes(seed):
    layer, fit, held = _toy_case(2048, seed)
    w = layer.proj.weight.data.clone()
    choice = _run(layer, fit, held)
    assert choice["kept"] == "gptq" and choice["gptq"] < 0.7 * choice["rtn"]
    hessian = alg.accumulate_hessian(None, 0, fit)[0]
    gptq = alg.gptq_quantize(w, hessian, 4, 32, act_order=True)
    assert choice["refit"]  # 2048 rows: the least-squares scales hold on the held-out rows too
    refined = alg.refine_gptq(w, hessian, gptq, GPTQConfig().refit_rounds, act_order=True)
    _holds(layer, refined, alg.rtn_quantize(w, 4, 32))


def test_split_windows_spreads_the_holdout():
    windows = torch.arange(144).unsqueeze(1).repeat(1, 4)
    fit, held = sg.split_windows(windows, sg.holdout_count(128))
    assert fit.shape == (128, 4) and held.shape == (16, 4)
    parts = (held[:, 0] // 36).tolist()  # a 4-part mix of 36 windows each: 4 held out from each
    assert sorted(parts) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert not set(fit[:, 0].tolist()) & set(held[:, 0].tolist())


def test_pick_prefers_the_first_on_ties():
    w, h = torch.ones(2, 3), torch.eye(3)
    kept, record = sg.pick(w, {"gptq": w.clone(), "rtn": w.clone()}, h)
    assert kept == "gptq" and record == {"kept": "gptq", "gptq": 0.0, "rtn": 0.0}


CAL = CalibrationConfig(n_samples=16, seq_len=32, source="pydoc-train")


def test_report_records_the_choice_per_layer_and_group(tiny):
    model = copy.deepcopy(tiny.model)
    report = quantize(model, GPTQConfig(calibration=CAL), tokenizer=tiny.tokenizer)
    assert set(report["safeguard"]) == {0, 1}
    for groups in report["safeguard"].values():
        assert set(groups) == {"qkv", "o", "gate_up", "down"}
        assert all(c["kept"] in ("gptq", "rtn") and c[c["kept"]] <= min(c["gptq"], c["rtn"]) for c in groups.values())
    assert sum(report["safeguard_kept"].values()) == 8
    assert report["calibration_tokens"] == 16 * 32 and report["heldout_tokens"] == 2 * 32
    off = quantize(copy.deepcopy(tiny.model), GPTQConfig(calibration=CAL, safeguard=False), tokenizer=tiny.tokenizer)
    assert off["safeguard"] == {} and off["heldout_tokens"] == 0


def test_given_windows_give_up_one_in_eight(tiny):
    windows = torch.randint(0, 500, (16, 24))
    report = quantize(copy.deepcopy(tiny.model), GPTQConfig(), windows=windows)
    assert report["calibration_tokens"] == 14 * 24 and report["heldout_tokens"] == 2 * 24
    single = quantize(copy.deepcopy(tiny.model), GPTQConfig(), windows=windows[:1])
    assert single["safeguard"] == {} and "single" in single["safeguard_note"]


def test_awq_falling_back_to_rtn_unfolds_its_scales(tiny, monkeypatch):
    """Where the safeguard keeps RTN, AWQ's folded scales are undone: the model is plain RTN's."""
    monkeypatch.setattr(sg, "pick", lambda w, candidates, h: ("rtn", {"kept": "rtn"}))
    awq = copy.deepcopy(tiny.model)
    report = quantize(awq, AWQConfig(calibration=CAL), tokenizer=tiny.tokenizer)
    assert report["safeguard_kept"] == {"rtn": 6}  # qkv, gate_up, down in 2 layers (o has GQA: no group)
    rtn = copy.deepcopy(tiny.model)
    quantize(rtn, RTNConfig())
    ids = torch.randint(0, 500, (2, 16))
    with torch.no_grad():
        got, want = dequantized_copy(awq)(input_ids=ids).logits, dequantized_copy(rtn)(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_awq_safeguard_keeps_awq_where_it_helps(tiny):
    report = quantize(copy.deepcopy(tiny.model), AWQConfig(calibration=CAL, rounding="gptq"), tokenizer=tiny.tokenizer)
    kept = report["safeguard_kept"]
    assert set(report["safeguard"][0]) == {"qkv", "gate_up", "down", "o"}  # o_proj: gptq or rtn
    assert kept.get("awq", 0) + kept.get("gptq", 0) + kept.get("rtn", 0) == 8


def test_gptq_scale_refit_lowers_the_first_layers_error_and_is_recorded(tiny):
    """The first layer sees the same inputs either way, so its calibration error is comparable: the
    least-squares scales never raise it; every group's choice records whether the refit was kept."""
    windows = torch.randint(0, 500, (16, 24))
    on = quantize(copy.deepcopy(tiny.model), GPTQConfig(), windows=windows)
    off = quantize(copy.deepcopy(tiny.model), GPTQConfig(refit_scales=False), windows=windows)
    assert all(on["layers"][0][g] <= off["layers"][0][g] * (1 + 1e-6) for g in off["layers"][0])
    assert sum(on["layers"][0].values()) < sum(off["layers"][0].values())
    assert all(isinstance(c["refit"], bool) for groups in on["safeguard"].values() for c in groups.values())
    assert all("refit" not in c for groups in off["safeguard"].values() for c in groups.values())


def test_refit_worse_on_held_out_tokens_is_dropped(monkeypatch):
    x, w = torch.randn(256, 64), torch.randn(16, 64)
    h, _ = alg.accumulate_hessian(None, 0, x)
    qw = alg.gptq_quantize(w, h, 4, 32)
    kept, refit = apply._refit_checked(w, qw, h, h, GPTQConfig(group_size=32))
    assert refit and alg.output_error(x, w, kept.dequantize()) <= alg.output_error(x, w, qw.dequantize())
    monkeypatch.setattr(alg, "refit_scales", lambda w, q, h: alg.QuantizedWeight(q.q, q.scale * 1.5, q.zero, 4, 32))
    kept, refit = apply._refit_checked(w, qw, h, h, GPTQConfig(group_size=32))
    assert not refit and kept is qw


def test_awq_gptq_rounding_gets_gptqs_scale_refit():
    """AWQ with `rounding: gptq` rounds as method gptq does: GPTQ, then `refine_gptq` with GPTQConfig's
    rounds; on its calibration rows the output error (brute force) is below plain GPTQ's."""
    layer, fit, _ = _toy_case(512, 0)
    w, h = layer.proj.weight.data.clone(), alg.accumulate_hessian(None, 0, fit)[0]
    config, gptq = AWQConfig(bits=4, group_size=32, rounding="gptq"), GPTQConfig()
    got = apply._round_stacked(layer, ["proj"], h, config)
    plain = alg.gptq_quantize(w, h, 4, 32, config.sym, gptq.block_size, gptq.damp, gptq.act_order, config.clip)
    want = alg.refine_gptq(w, h, plain, gptq.refit_rounds, sym=config.sym, block_size=gptq.block_size,
                           damp=gptq.damp, act_order=gptq.act_order)
    torch.testing.assert_close(got.dequantize(), want.dequantize())
    assert alg.output_error(fit, w, got.dequantize()) < alg.output_error(fit, w, plain.dequantize())


def test_awq_rtn_scale_refit_lowers_the_first_layers_calibration_error(tiny):
    """`AWQConfig(refit_scales=True)`: RTN's codes with least-squares scales. The first layer sees the
    calibration windows' embeddings either way, so its q/k/v output error on them (brute force, through
    the folded norm) can only fall: the solve minimizes exactly that error, stacked."""
    windows = torch.randint(0, 500, (16, 24))
    errors = {}
    for refit in (False, True):
        model = copy.deepcopy(tiny.model)
        quantize(model, AWQConfig(refit_scales=refit, safeguard=False, lm_head_bits=None), windows=windows)
        layer, ref = dequantized_copy(model).model.layers[0], tiny.model.model.layers[0]
        with torch.no_grad():
            emb = tiny.model.model.embed_tokens(windows)
            x_ref, x = ref.input_layernorm(emb), layer.input_layernorm(emb)  # x carries AWQ's 1 / s
            errors[refit] = sum(float((getattr(ref.self_attn, n)(x_ref) - getattr(layer.self_attn, n)(x)).pow(2).sum())
                                for n in ("q_proj", "k_proj", "v_proj"))
    assert errors[True] < errors[False]
