"""Kernel plans chosen by measurement (autotune.py): the pure decision on fake timings, the timing
cache keyed by CPU and torch version, every path against the de-quantized reference, and the
public QuantLinear methods serving uses (stack, keep_dense_copy, dense_weight, is_fast)."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from lmopt.compress.quantize import RTNConfig, native, prepare_runtime, quantize
from lmopt.compress.quantize import autotune as at
from lmopt.compress.quantize.algorithms import rtn_quantize
from lmopt.compress.quantize.runtime import QuantLinear

ROWS = [1, 8, 32, 512]


def _timings(paths: dict[str, list[float]], dequant: float = 0.0) -> dict:
    return {"rows": ROWS, "paths": paths, "dequant": {d: dequant for d in at.DENSE if d in paths}}


def _layer(bits: int, group: int, out: int = 64, k: int = 96, sym: bool = False, seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    qw = rtn_quantize(torch.randn(out, k) * 0.1, bits, group, sym)
    return QuantLinear.from_codes(qw.q, qw.scale, qw.zero, bits, qw.group_size, bias=torch.randn(out))


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh LMOPT_HOME and no timings remembered from earlier tests."""
    monkeypatch.setenv("LMOPT_HOME", str(tmp_path))
    monkeypatch.setattr(at, "_LOADED", {})
    return tmp_path


def test_decide_keeps_the_fastest_path_per_row_range():
    timings = _timings({"int4": [1.0, 2.0, 6.0, 90.0], "bf16": [3.0, 3.0, 5.0, 30.0],
                        "fp32": [2.0, 5.0, 12.0, 80.0]}, dequant=100.0)
    plan = at.decide(timings, "int4", cache_dense=True)
    # 1 and 8 rows: int4; 32 (17-128 rows) and 512: bf16, the dtype whose plan is closest to the best
    assert plan.tiers == ((16, "int4"), (at.MAX_ROWS, "bf16")) and plan.dense == "bf16"
    assert [plan.path(r) for r in (1, 2, 16, 17, 128, 129, 4096)] == ["int4"] * 3 + ["bf16"] * 4
    # without a dense copy every dense call de-quantizes first (100 per call): the kernel wins throughout
    plan = at.decide(timings, "int4", cache_dense=False)
    assert plan.tiers == ((at.MAX_ROWS, "int4"),) and plan.dense is None
    assert "de-quantizing costs" in plan.why


def test_decide_takes_a_kernel_that_rounds_activations_only_when_it_is_clearly_faster():
    # q4a8 rounds activations to int8: a near-tie with the exact int4 kernel keeps int4 (rows 1),
    # a clear win takes q4a8 (rows 8), and against the dense path it gets no tie-break (rows 32)
    timings = _timings({"int4": [1.0, 2.0, 4.0, 40.0], "q4a8": [0.99, 1.0, 3.1, 30.0],
                        "bf16": [5.0, 5.0, 3.05, 10.0]})
    plan = at.decide(timings, ["int4", "q4a8"], cache_dense=True)
    assert plan.tiers == ((2, "int4"), (16, "q4a8"), (at.MAX_ROWS, "bf16"))
    timings["paths"]["q4a8"][2] = 3.0  # as fast as dense: the kernel (no dense copy needed)
    assert at.decide(timings, ["int4", "q4a8"], cache_dense=True).path(32) == "q4a8"


def test_decide_prefers_the_kernel_on_a_near_tie_and_uses_dense_where_there_is_no_kernel():
    timings = _timings({"int8": [1.02, 2.0, 4.0, 8.0], "bf16": [1.0, 1.0, 2.0, 4.0], "fp32": [9.0] * 4})
    plan = at.decide(timings, "int8", cache_dense=True, margin=0.03)
    assert plan.tiers == ((2, "int8"), (at.MAX_ROWS, "bf16"))
    # a path the timings lack (a layout without a kernel) is never chosen
    plan = at.decide(_timings({"bf16": [3.0, 3.0, 5.0, 30.0], "fp32": [2.0, 2.5, 5.5, 80.0]}), None, True)
    assert plan.tiers == ((at.MAX_ROWS, "bf16"),) and plan.dense == "bf16"  # one dense copy, not two
    assert "no low-bit kernel" in plan.why


def test_decide_does_not_let_one_slow_point_pick_a_dense_dtype_that_loses_elsewhere():
    # bf16's batch-1 timing was given up on (far slower than the kernel there); it is still the
    # right dense dtype for prompt chunks, where fp32 would lose to the kernel.
    timings = _timings({"int4": [0.012, 0.034, 0.117, 1.91], "bf16": [0.181, 0.036, 0.069, 0.675],
                        "fp32": [0.018, 0.072, 0.284, 3.22]})
    plan = at.decide(timings, "int4", cache_dense=True)
    assert plan.tiers == ((16, "int4"), (at.MAX_ROWS, "bf16"))


def test_timing_cache_round_trip_is_keyed_by_cpu_and_torch(isolated_cache, monkeypatch):
    timings = _timings({"int4": [1.0, 2.0, 3.0, 4.0], "bf16": [2.0, 2.0, 2.0, 2.0]})
    path = at.save_timings("int4|4b|g64|64x96|t1", timings)
    assert path.parent == isolated_cache / "kernels" and torch.__version__.split("+")[0] in path.name
    stored = json.loads(path.read_text())
    assert stored["torch"] == torch.__version__ and stored["cpu"] == at.detect_hardware().cpu
    monkeypatch.setattr(at, "_LOADED", {})  # a new process reads the file
    assert at.load_timings() == {"int4|4b|g64|64x96|t1": timings}
    # another CPU model: another file, nothing cached
    monkeypatch.setattr(at, "detect_hardware", lambda: SimpleNamespace(cpu="Some Other CPU @ 3GHz"))
    assert at.cache_file() != path and at.load_timings() == {}
    # a file written by another torch version, or a damaged one, is ignored (and later rewritten)
    at.cache_file().write_text(json.dumps({**stored, "cpu": "Some Other CPU @ 3GHz", "torch": "0.1"}))
    monkeypatch.setattr(at, "_LOADED", {})
    assert at.load_timings() == {}
    at.cache_file().write_text("{not json")
    monkeypatch.setattr(at, "_LOADED", {})
    assert at.load_timings() == {}
    # timings taken by an older procedure are measured again
    at.cache_file().write_text(json.dumps({**stored, "cpu": "Some Other CPU @ 3GHz", "method": 1}))
    monkeypatch.setattr(at, "_LOADED", {})
    assert at.load_timings() == {}


def test_first_call_costs_do_not_count_against_a_path(monkeypatch):
    """A path whose first call pays a one-time cost (primitive creation: 1,000x a call) is timed on
    its later calls, so it is not given up on."""
    calls = []
    clock = [0.0]

    def fn() -> None:
        clock[0] += 1.0 if not calls else 1e-4  # the first call is slow, every later one fast
        calls.append(1)

    monkeypatch.setattr(at.time, "perf_counter", lambda: clock[0])
    assert at._time_call(fn, give_up=5e-3) == pytest.approx(1e-4)


def test_auto_measures_once_then_reads_the_cache_and_every_row_count_matches_dequant(isolated_cache,
                                                                                    monkeypatch):
    calls = []
    real_measure = at.measure
    monkeypatch.setattr(at, "measure", lambda *a, **kw: calls.append(a) or real_measure(*a, **kw))
    layer = _layer(4, 64, out=128, k=512)  # 65536 weights: measured
    assert layer.prepare("auto") == "int4" and layer.plan.source == "measured" and len(calls) == 1
    timings = at.load_timings()[at.signature(layer)]
    alternatives = ["q4a8"] if native.available() else []  # lmopt's C kernel competes where it is built
    assert timings["rows"] == list(at.ROWS) and set(timings["paths"]) == {"int4", "bf16", "fp32", *alternatives}
    assert all(len(v) == len(at.ROWS) and min(v) > 0 for v in timings["paths"].values())
    twin = _layer(4, 64, out=128, k=512, seed=1)
    twin.prepare("auto")
    assert twin.plan.source == "cached" and len(calls) == 1
    for cache_dense in (False, True):
        layer.prepare("auto", cache_dense=cache_dense)
        assert (layer.dense_weight() is not None) == (cache_dense and layer.plan.dense is not None)
        for rows in (1, 5, 32, 200):
            x = torch.randn(rows, 512)
            reference = x.bfloat16().float() @ layer.dequantize().T + layer.bias
            # lmopt's C kernels also round activations to int8 per block of 32 (y's std here ~2.3)
            atol = 0.08 if layer.plan.path(rows) in native.KERNEL_BITS else 0.03
            torch.testing.assert_close(layer(x), reference, rtol=0.02, atol=atol)


@pytest.mark.parametrize("bits,group,sym,act", [(4, 32, False, False), (8, 0, True, False),
                                                 (8, 0, False, False), (8, 32, False, False),
                                                 (8, 0, True, True)])
def test_every_path_matches_dequant(bits, group, sym, act):
    layer = _layer(bits, group, sym=sym)
    layer.act_quant = act
    layer.prepare("auto")
    kernel = layer.backend if layer.backend in at.KERNELS else None
    assert kernel == {(4, False): "int4", (8, False): "int8" if group == 0 else None, (8, True): "w8a8"}[(bits, act)]
    own = {4: "q4a8", 8: "q8a8"}[bits] if native.available() else None  # lmopt's C kernel (int8 x int8 too)
    assert layer.kernel_candidates() == [*([kernel] if kernel else []), *([own] if own else [])]
    x = torch.randn(2, 3, 96)
    reference = layer.run_path("dequant", x.bfloat16().float())
    for path in [*layer.kernel_candidates(), *at.DENSE]:
        for dense in (False, True):
            weight = layer.dequantize(at.DENSE[path]) if dense and path in at.DENSE else None
            got = layer.run_path(path, x, weight).float()
            torch.testing.assert_close(got, reference, rtol=0.03, atol=0.03 if not act else 0.06)


def test_group_wise_int8_gets_a_dense_copy_when_measurement_says_so(isolated_cache, monkeypatch):
    monkeypatch.setattr(at, "measure", lambda layer, kernels, rows=at.ROWS: _timings(  # any C kernel slowest
        {"bf16": [1.0, 1.0, 2.0, 10.0], "fp32": [2.0, 3.0, 6.0, 40.0], **{k: [99.0] * 4 for k in kernels}},
        dequant=5.0))
    layer = _layer(8, 128, out=128, k=576)
    assert layer.prepare("auto") == "dequant" and not layer.is_fast
    assert layer.plan.tiers == ((at.MAX_ROWS, "bf16"),) and layer.dense_weight() is None
    assert layer.keep_dense_copy() and not layer.keep_dense_copy()
    assert layer.dense_weight().dtype == torch.bfloat16 and layer.plan.source == "cached"
    x = torch.randn(4, 576)
    torch.testing.assert_close(layer(x), x.bfloat16().float() @ layer.dequantize().T + layer.bias,
                               rtol=0.02, atol=0.03)


def test_default_plan_when_off_small_or_explicit(isolated_cache, monkeypatch):
    layer = _layer(4, 32)  # 6144 weights: not worth measuring
    layer.prepare("auto")
    assert layer.plan.tiers == ((32, "int4"), (at.MAX_ROWS, "bf16")) and "not worth" in layer.plan.why
    layer.dense_rows = 2  # the fixed plan follows dense_rows
    assert layer.plan.path(2) == "int4" and layer.plan.path(3) == "bf16" and "not worth" in layer.plan.why
    layer.prepare("int4")
    layer.dense_rows = 2
    assert layer.plan.tiers == ((2, "int4"), (at.MAX_ROWS, "bf16")) and layer.plan.source == "explicit"
    monkeypatch.setenv("LMOPT_AUTOTUNE", "0")
    big = _layer(4, 64, out=128, k=512)
    big.prepare("auto")
    assert big.plan.source == "default" and not (isolated_cache / "kernels").exists()
    monkeypatch.setattr(at, "measure", lambda layer, kernels, rows=at.ROWS: _timings(
        {**{k: [1.0 + i, 1.0 + i, 1.0 + i, 1.0 + i] for i, k in enumerate(kernels)}, "bf16": [9.0] * 4}))
    monkeypatch.delenv("LMOPT_AUTOTUNE")
    big.prepare("auto")
    big.dense_rows = 2  # a measured plan is not overridden
    assert big.plan.source == "measured" and big.plan.tiers == ((at.MAX_ROWS, "int4"),)


def test_stack_shares_the_plan_and_the_dense_copy():
    parts = [_layer(4, 32, out=n, seed=i) for i, n in enumerate((64, 32, 32))]
    for part in parts:
        part.prepare("auto")
        assert part.is_fast and part.keep_dense_copy()
    stacked = QuantLinear.stack(parts)
    assert stacked is not None and stacked.out_features == 128
    x = torch.randn(40, 96)  # above dense_rows: the dense path
    for got, part in zip(stacked(x).split([64, 32, 32], dim=-1), parts, strict=True):
        torch.testing.assert_close(got, part(x), rtol=1e-2, atol=1e-2)
        assert part.plan.tiers == stacked.plan.tiers and part.plan.source.startswith("stacked (128x96)")
        assert part.dense_weight().untyped_storage().data_ptr() == \
            stacked.dense_weight().untyped_storage().data_ptr()
    mixed = [parts[0], _layer(4, 32, out=32)]
    mixed[1].prepare("int4")  # another plan source: not stacked
    assert QuantLinear.stack(mixed) is None and QuantLinear.stack(parts[:1]) is None
    assert QuantLinear.stack([parts[0], torch.nn.Linear(96, 32)]) is None


def test_int8_activation_layers_stack_as_int8_activation_layers():
    """W8A8's q/k/v stack into one layer that still rounds its activations (the serving engine's fused
    projections): same backend, same outputs as the parts, and the hot-loop closure agrees too."""
    parts = [_layer(8, 0, out=n, sym=True, seed=i) for i, n in enumerate((64, 32))]
    for part in parts:
        part.act_quant = True
        part.prepare("auto")
    stacked = QuantLinear.stack(parts)
    assert stacked is not None and stacked.act_quant and stacked.backend == parts[0].backend
    for rows in (1, 40):
        x = torch.randn(rows, 96).bfloat16()
        whole = stacked(x).float()
        for got, part in zip(whole.split([64, 32], dim=-1), parts, strict=True):
            torch.testing.assert_close(got, part(x).float(), rtol=1e-2, atol=1e-2)
        bare = QuantLinear.from_codes(stacked.codes(), stacked.scales.float(), stacked.zeros.float(), 8,
                                      stacked.group_size)  # no bias: direct() runs its hot loop
        bare.act_quant = True
        bare.prepare("auto")
        torch.testing.assert_close(bare.direct()(x).float(), bare(x).float(), rtol=0, atol=0)


def test_kernel_plan_names_each_layer_class(tiny):
    model = copy.deepcopy(tiny.model)
    rows = at.kernel_plan(model)
    assert {r["backend"] for r in rows} == {"dense"} and rows[0]["why"] == "not quantized"
    quantize(model, RTNConfig(bits=4, group_size=32))
    prepare_runtime(model)
    rows = at.kernel_plan(model)
    by_layer = {r["layers"]: r for r in rows}
    q = by_layer["model.layers.*.self_attn.q_proj"]
    assert q["count"] == 2 and q["shape"] == "64x64" and q["format"] == "int4 g32"
    assert q["paths"] == "rows 1-32: int4; 33+: bf16 (de-quantized per call)" and q["tiers"][-1] == [None, "bf16"]
    assert by_layer["lm_head"]["format"] == "int8 per-channel"
    assert sum(r["count"] for r in rows) == 2 * 7 + 1
    json.dumps(rows)  # printable as JSON by `lmopt hw` / `lmopt bench --json`


@pytest.mark.parametrize("bits,group,sym", [(4, 32, False), (8, 0, True), (8, 0, False)])
def test_direct_gives_forward_s_values_at_every_row_count(bits, group, sym):
    """The hot-loop closure calls the kernel itself for the first row range and hands everything else
    (more rows, 3-D or fp32 inputs) to forward; asymmetric int8 adds forward's correction: the same values."""
    torch.manual_seed(0)
    qw = rtn_quantize(torch.randn(64, 96) * 0.1, bits, group, sym)
    layer = QuantLinear.from_codes(qw.q, qw.scale, qw.zero, bits, qw.group_size)
    backend = "int4" if bits == 4 else "int8"
    assert layer.prepare(backend, dense_rows=4) == backend
    run = layer.direct()
    for x in [torch.randn(rows, 96, dtype=torch.bfloat16) for rows in (1, 4, 5, 20)] + \
             [torch.randn(2, 3, 96, dtype=torch.bfloat16), torch.randn(1, 96)]:
        assert torch.equal(run(x), layer(x))
    layer.prepare("dequant")  # a re-prepare after the closure was made takes effect
    x = torch.randn(1, 96, dtype=torch.bfloat16)
    assert torch.equal(run(x), layer(x))
    with_bias = QuantLinear.from_codes(qw.q, qw.scale, qw.zero, bits, qw.group_size, bias=torch.randn(64))
    assert with_bias.direct() == with_bias.forward
