"""`plan(model, hardware, context, batch)`: does the model fit, how fast, at what cost, in which format.

For each format (fp32, bf16, int8, int4) on the target: weights + KV cache + activations against the
usable memory, roofline prefill and decode tokens/s (`roofline.py`), cost per million input and output
tokens at the target's hourly price, and the recommended format: the most precise of bf16 / int8 / int4
that fits (fp32 only when nothing smaller is asked for; it doubles memory for no quality gain in
inference), with the fastest fitting format named beside it. On a target whose fp32 peak is above its
bf16 peak (a CPU that emulates bf16), fp32 comes first. There bf16 is less precise, and it processes
prompts several times slower (9x on an AVX2 EPYC), though its batch-1 decode can be faster (1.7x
there). That is why lmopt itself runs fp32 on such CPUs (`lmopt.hardware.detect_hardware`); `fastest`
still names the quickest decode.

On this machine (`hardware="this"`) the plan also measures: it calibrates the per-step overhead and the
achieved bandwidth (`calibrate.py`: from 1- and up-to-9-layer random versions of the model and timed
matrix-vector products, never the model's own decode) and measures the model's batch-1 decode in each
planned format (int8 and int4 as lmopt's `QuantLinear` layers of random codes), so the calibrated
estimate, the pure roofline and the measurement stand side by side.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import Field

from lmopt.configs import Config
from lmopt.hardware import detect_hardware
from lmopt.models import LoadedModel, load_model
from lmopt.select.calibrate import (
    Calibration,
    calibration_from,
    calibration_probes,
    interleaved,
    load_calibration,
    measure_decode,
    measured_context,
    random_quant_linear,
    store_calibration,
)
from lmopt.select.hardware_table import THIS_MACHINE, Target, get_target, with_price
from lmopt.select.model_shape import ModelShape, model_config, model_shape
from lmopt.select.roofline import (
    GB,
    cost_per_million,
    decode_tokens_per_s,
    make_format,
    memory,
    prefill_tokens_per_s,
)

FormatName = Literal["fp32", "bf16", "int8", "int4"]
PREFERENCE = ("bf16", "int8", "int4", "fp32")
PREFERENCE_WITHOUT_FAST_BF16 = ("fp32", "bf16", "int8", "int4")
MEASURABLE = ("fp32", "bf16", "int8", "int4")


class PlanConfig(Config):
    """What to plan for: the target hardware, the sequence length and batch, formats, measurement."""

    hardware: str = THIS_MACHINE
    """`this` (this machine, measured) or a row of the hardware table: h100-sxm, h100-pcie, h200, a100-80gb,
    a100-40gb, l4, l40s, a10g, rtx-4090, rtx-3090, rtx-4060, tpu-v5e, apple-m2, apple-m2-max, apple-m3,
    apple-m3-max, xeon-8480, epyc-9654, graviton3."""
    context: int = Field(default=2048, ge=1)
    """Tokens per sequence (prompt + output) the KV cache must hold."""
    batch: int = Field(default=1, ge=1)
    """Sequences served together."""
    formats: list[FormatName] = Field(default_factory=lambda: ["fp32", "bf16", "int8", "int4"])
    """Number formats to plan: fp32, bf16, int8 (W8A8, per-channel scales), int4 (weight-only, grouped)."""
    group_size: int = Field(default=128, ge=8)
    """int4 weights per group (one fp16 scale and a 4-bit zero point each)."""
    price_per_hour: float | None = Field(default=None, gt=0)
    """USD per device-hour, replacing the table's (which is a dated list price)."""
    threads: int | None = Field(default=None, ge=1)
    """Torch threads for the measurements on this machine (default: lmopt's, the physical cores)."""
    measure: bool = True
    """On `this` hardware: calibrate and measure batch-1 decode in each planned format (a minute or two)."""
    new_tokens: int = Field(default=32, ge=4)
    """Tokens generated per measured decode run."""
    rounds: int = Field(default=5, ge=1)
    """Rounds of measurement on this machine; each figure is the median over rounds."""


@dataclass
class PlanRow:
    format: str
    weights_gb: float
    kv_cache_gb: float
    activations_gb: float
    total_gb: float
    usable_gb: float
    fits: bool
    prefill_tok_s: float
    decode_tok_s: float
    """Pure roofline at `context` tokens of KV cache and the plan's batch."""
    decode_tok_s_calibrated: float | None = None
    """With this machine's measured overhead and bandwidth share (calibrate.py), same point."""
    cost_per_m_input: float | None = None
    cost_per_m_output: float | None = None
    measured_decode_tok_s: float | None = None
    """Batch-1 decode measured here (benchmark_speed), at `measured_context` tokens of KV cache."""
    estimate_at_measured: float | None = None
    """The calibrated estimate at the measurement's batch (1) and context."""
    roofline_at_measured: float | None = None
    error_pct: float | None = None
    """(calibrated estimate - measured) / measured, in percent."""
    roofline_error_pct: float | None = None


@dataclass
class PlanResult:
    model: dict[str, Any]
    target: dict[str, Any]
    context: int
    batch: int
    rows: list[PlanRow]
    recommended: str | None
    fastest: str | None
    calibration: dict[str, Any] | None = None
    measured_context: int | None = None
    notes: list[str] = field(default_factory=list)

    def row(self, fmt: str) -> PlanRow:
        return next(r for r in self.rows if r.format == fmt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(shape: ModelShape, fmt_name: str, target: Target, cfg: PlanConfig,
         calibration: Calibration | None) -> PlanRow:
    fmt = make_format(fmt_name, cfg.group_size)
    mem = memory(shape, fmt, target, cfg.context, cfg.batch)
    prefill = prefill_tokens_per_s(shape, fmt, target, cfg.context, cfg.batch)
    decode = decode_tokens_per_s(shape, fmt, target, cfg.context, cfg.batch)
    row = PlanRow(fmt_name, round(mem.weights / GB, 4), round(mem.kv_cache / GB, 4), round(mem.activations / GB, 4),
                  round(mem.total / GB, 4), round(mem.usable / GB, 2), mem.fits, round(prefill, 1), round(decode, 2))
    if calibration is not None:
        calibrated = decode_tokens_per_s(shape, fmt, target, cfg.context, cfg.batch,
                                         overhead_s=calibration.overhead_s(shape.layers),
                                         bandwidth_efficiency=calibration.efficiency_of(fmt_name))
        row.decode_tok_s_calibrated = round(calibrated, 2)
    best_decode = row.decode_tok_s_calibrated or decode
    row.cost_per_m_input = _round(cost_per_million(target.price_per_hour, prefill))
    row.cost_per_m_output = _round(cost_per_million(target.price_per_hour, best_decode))
    return row


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")  # 4 significant digits


def _compare(row: PlanRow, shape: ModelShape, target: Target, calibration: Calibration, measured: float,
             context: int, group_size: int) -> None:
    fmt = make_format(row.format, group_size)
    estimate = decode_tokens_per_s(shape, fmt, target, context, 1, overhead_s=calibration.overhead_s(shape.layers),
                                   bandwidth_efficiency=calibration.efficiency_of(row.format))
    roof = decode_tokens_per_s(shape, fmt, target, context, 1)
    row.measured_decode_tok_s = round(measured, 2)
    row.estimate_at_measured, row.roofline_at_measured = round(estimate, 2), round(roof, 2)
    row.error_pct = round(100 * (estimate - measured) / measured, 1)
    row.roofline_error_pct = round(100 * (roof - measured) / measured, 1)


def _measure_here(model: str | LoadedModel | Any, shape: ModelShape, target: Target, cfg: PlanConfig,
                  threads: int, rows: list[PlanRow]) -> tuple[Calibration, int]:
    """Calibrate from the probes (shallow and deeper random models, matrix timings) and measure the model
    itself in each planned format (the check), interleaved round by round so a drifting load weighs on both."""
    probes = calibration_probes(shape, threads, cfg.new_tokens, model_config(model), cfg.group_size)
    # a bare ModelShape has no weights to run: it is calibrated, not measured
    measured = [] if isinstance(model, ModelShape) else [r.format for r in rows if r.format in MEASURABLE]
    for fmt in measured:
        loaded = _loaded_as(model, fmt, cfg.group_size)
        probes[f"model_{fmt}_tok_s"] = functools.partial(measure_decode, loaded, threads, cfg.new_tokens, 1)
    figures = interleaved(probes, cfg.rounds, threads)
    calibration = calibration_from(figures, shape, target, threads, cfg.group_size)
    store_calibration(calibration)
    context = measured_context(cfg.new_tokens)
    for row in rows:
        if row.format in measured:
            _compare(row, shape, target, calibration, figures[f"model_{row.format}_tok_s"], context, cfg.group_size)
    return calibration, context


def _loaded_as(model: str | LoadedModel | Any, fmt: str, group_size: int) -> LoadedModel:
    """The model in `fmt`: fp32 or bf16 weights (loaded from its reference, or a cast copy of an in-memory
    model); int8/int4: bf16 with every Linear an lmopt `QuantLinear` of random codes (the speed of a
    quantized model without the minutes quantizing takes)."""
    import torch  # lazy: lmopt.select is imported by the CLI at start-up; torch takes ~1 s

    dtype = "float32" if fmt == "fp32" else "bfloat16"
    if isinstance(model, LoadedModel):
        loaded = LoadedModel(copy.deepcopy(model.model).to(getattr(torch, dtype)), model.tokenizer, model.ref)
    else:
        loaded = load_model(model, dtype=dtype)
    if fmt in ("int8", "int4"):
        from lmopt.compress.quantize.apply import set_module  # lazy: the quantize package imports its kernels

        bits, group = (8, None) if fmt == "int8" else (4, group_size)
        for name, linear in [(n, m) for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear)]:
            quant = random_quant_linear(linear.out_features, linear.in_features, bits, group, linear.bias)
            set_module(loaded.model, name, quant)
    return loaded


def plan(model: str | LoadedModel | ModelShape | Any, hardware: str | Target | None = None,
         context: int | None = None, batch: int | None = None, config: PlanConfig | None = None) -> PlanResult:
    """Plan `model` (a reference, a LoadedModel, a built model or a ModelShape) on `hardware` (a table name,
    `this`, or a `Target` of your own); see the module docstring. Arguments override the config's."""
    custom = hardware if isinstance(hardware, Target) else None
    fields = {"hardware": None if custom else hardware, "context": context, "batch": batch}
    overrides = {k: v for k, v in fields.items() if v is not None}
    cfg = PlanConfig.parse({**(config or PlanConfig()).to_dict(), **overrides}, where="plan")
    threads = cfg.threads or detect_hardware().threads
    here = custom is None and cfg.hardware.strip().lower() == THIS_MACHINE
    target = with_price(custom or get_target(cfg.hardware, threads=threads), cfg.price_per_hour)
    shape = model_shape(model)
    calibration = None
    if here and not cfg.measure:
        calibration = load_calibration(threads)  # from an earlier measured plan, if any
    rows = [_row(shape, f, target, cfg, None) for f in cfg.formats]
    notes = [f"prices: {target.price_source}", "decode at a full KV cache of `context` tokens (the slowest step)"]
    measured_ctx = None
    if here and cfg.measure:
        calibration, measured_ctx = _measure_here(model, shape, target, cfg, threads, rows)
    if calibration is not None:
        calibrated = {r.format: _row(shape, r.format, target, cfg, calibration) for r in rows}
        for row in rows:
            row.decode_tok_s_calibrated = calibrated[row.format].decode_tok_s_calibrated
            row.cost_per_m_output = calibrated[row.format].cost_per_m_output
        notes.append(f"calibrated on this machine ({calibration.threads} threads): overhead "
                     f"{calibration.fixed_s * 1e3:.2f} ms + {calibration.per_layer_s * 1e3:.3f} ms/layer per step "
                     f"(random 1- and n-layer probes); weight streaming at {calibration.efficiency} of the copy "
                     f"bandwidth ({calibration.reference}'s matrices x one vector); the model's own decode is not "
                     "used for the calibration")
    fitting = [r for r in rows if r.fits]
    order = PREFERENCE_WITHOUT_FAST_BF16 if target.compute_tflops("fp32") > target.bf16_tflops else PREFERENCE
    ranked = sorted(fitting, key=lambda r: order.index(r.format))
    recommended = ranked[0].format if ranked else None
    fastest = max(fitting, key=lambda r: r.decode_tok_s_calibrated or r.decode_tok_s).format if fitting else None
    if not fitting:
        smallest = min(rows, key=lambda r: r.total_gb)
        notes.append(f"no format fits: the smallest ({smallest.format}) needs {smallest.total_gb:.2f} GB, "
                     f"{smallest.usable_gb:.2f} GB usable; lower context or batch, or shard the model")
    return PlanResult(shape.summary(), target.to_dict(), cfg.context, cfg.batch, rows, recommended, fastest,
                      calibration.to_dict() if calibration else None, measured_ctx, notes)

