"""`QuantLinear`: a Linear whose weight is stored as low-bit codes, run by the fastest kernel available.

Stored state (what is saved): `qweight` packed codes (N, packed_width) uint8, `scales` (N, G)
float16 and `zeros` (N, G) uint8, optional `bias`. De-quantized weight = (q - zero) * scale per group.

Backends (how the codes are laid out for a kernel), chosen once by `prepare(backend)`:
- `int4`: torch's own CPU int4 kernel `_weight_int4pack_mm_for_cpu` (bf16 activations; weights of
  <= 4 bits). Its grid is (q - 8) * s + z with float z, so our (q - zero) * s becomes
  z = (8 - zero) * s exactly; a short last group (576 = 4 x 128 + 64) runs as kernel groups of 64
  with each scale repeated, which gives the same weights.
- `q4a8`, `q8a8`: lmopt's own C kernels (native.py): 4-/8-bit weights x activations rounded to
  int8 per block of 32, as llama.cpp computes Q4_1 and Q8_0; with backend `auto` they compete with
  the layer's own kernel wherever they are built (AVX-512 VNNI), and the autotuner keeps whichever
  is faster per row range (group-wise int8, which torch has no kernel for, gets one here).
- `int8`: `_weight_int8pack_mm` (bf16 activations, per-channel int8 weights); asymmetric codes add
  a rank-1 correction -sum(x) * (zero - 128) * s.
- `w8a8`: oneDNN dynamic quantization (`quantized::linear_dynamic`): activations quantized to int8
  on the fly (per tensor), int8 x int8 GEMM, fp32 in and out.
- `dequant`: de-quantize into the activation dtype on each call and use F.linear; works on any
  device and dtype (the reference the fast paths are tested against).
Which path runs for an input of a given number of rows is the layer's `plan`, also decided once in
`prepare` (forward only looks it up; see autotune.py). With backend `auto`, on a CPU, each path is
timed once per layout and shape at 1/8/32/512 rows and the fastest is kept per row range: the
low-bit kernel competes with a dense bf16 or fp32 weight (kept in memory when `cache_dense` is set,
faster and larger; else de-quantized per call). An explicit backend runs the fixed plan: the
int4/int8 kernel up to `dense_rows` rows (they are fast for a few rows, slow for many) and a dense
bf16 weight above.

What serving uses (so it needs no private fields): `stack` (one layer for q/k/v or gate/up),
`keep_dense_copy`, `dense_weight`, `is_fast`, `plan`, `direct`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from lmopt.compress.quantize.algorithms import dequantize
from lmopt.compress.quantize.autotune import DENSE, KERNELS, Plan, default_plan, tune
from lmopt.compress.quantize.kernels import (
    CORRECTION_BLOCK,
    alternative_kernels,
    build_kernel,
    fake_quant_activation,
    pick_backend,
    run_kernel,
)
from lmopt.compress.quantize.native import KERNEL_BITS
from lmopt.compress.quantize.native import linear as native_linear
from lmopt.compress.quantize.packing import pack_bits, packed_width, unpack_bits

BACKENDS = ("auto", "int4", "int8", "q4a8", "q8a8", "w8a8", "dequant")
INT4_KERNEL_GROUPS = (32, 64, 128, 256)
DEQUANT_BLOCK = 1 << 20
"""Weights de-quantized per block (each of its three or four fp32 temporaries 4 MB)."""


class QuantLinear(torch.nn.Module):
    """y = x W^T + b with W held as `bits`-bit codes in groups of `group_size` input columns."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int,
                 bias: bool = False, act_quant: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.act_quant = bits, group_size, act_quant
        n_groups = math.ceil(in_features / group_size)
        width = packed_width(in_features, bits)
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, n_groups, dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=torch.uint8))
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None
        # backend: the layout built; requested: what prepare was asked for ("auto" = measured plan)
        self.backend, self.requested, self.cache_dense = "dequant", "dequant", False
        self._dense_rows = 32
        self._kernel: dict[str, Any] = {}
        self._alt: dict[str, dict[str, Any]] = {}  # alternative kernels' tensors, built when timed or planned
        self._dense: torch.Tensor | None = None
        self.plan: Plan = default_plan("dequant")

    @classmethod
    def from_codes(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int,
                   bias: torch.Tensor | None = None, act_quant: bool = False) -> QuantLinear:
        """Build from integer codes (N, K), per-group scale and zero (N, G)."""
        out_features, in_features = q.shape
        layer = cls(in_features, out_features, bits, group_size, bias is not None, act_quant)
        layer.qweight.copy_(pack_bits(q, bits))
        layer.scales.copy_(scale.to(torch.float16))
        layer.zeros.copy_(zero.round().to(torch.uint8))
        if bias is not None:
            layer.bias.data.copy_(bias.detach())
        return layer

    def codes(self) -> torch.Tensor:
        return unpack_bits(self.qweight.cpu(), self.bits, self.in_features).to(self.qweight.device)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (N, K) this layer computes with, built in row blocks of about DEQUANT_BLOCK
        weights straight into `dtype`: a whole-matrix fp32 pass would hold four (N, K) fp32
        temporaries (codes, zeros, scales, product), 450 MB for a 49152 x 576 lm_head, and
        unpacking 4-bit codes goes through int64."""
        out = torch.empty(self.out_features, self.in_features, dtype=dtype, device=self.qweight.device)
        step = max(1, DEQUANT_BLOCK // self.in_features)
        for start in range(0, self.out_features, step):
            out[start:start + step] = self._weight_rows(start, start + step, dtype)
        return out

    def _weight_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows start:stop of the de-quantized weight, (stop - start, K) in `dtype`."""
        rows = slice(start, stop)
        codes = unpack_bits(self.qweight[rows].cpu(), self.bits, self.in_features).to(self.qweight.device)
        return dequantize(codes, self.scales[rows].float(), self.zeros[rows].float(), self.group_size).to(dtype)

    def _linear_per_call(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x W^T with W de-quantized on this call: whole for a small layer, else DEQUANT_BLOCK weights
        of output rows at a time, so neither an (N, K) dense copy (57 MB in bf16 for SmolLM2's lm_head,
        per call) nor its fp32 temporaries (4 x 113 MB) ever exist."""
        if self.out_features * self.in_features <= DEQUANT_BLOCK:
            return F.linear(x, self._weight_rows(0, self.out_features, dtype))
        y = torch.empty(*x.shape[:-1], self.out_features, dtype=dtype, device=x.device)  # (..., N)
        step = max(1, DEQUANT_BLOCK // self.in_features)
        for start in range(0, self.out_features, step):
            stop = min(start + step, self.out_features)
            y[..., start:stop] = F.linear(x, self._weight_rows(start, stop, dtype))
        return y

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}, "
                f"backend={self.backend}{', act=int8' if self.act_quant else ''}, "
                f"{self.plan.describe(self.cache_dense)}")

    @property
    def is_fast(self) -> bool:
        """Runs a low-bit int4/int8 kernel (for few rows; dense weights may serve the rest)."""
        return self.backend in ("int4", "int8", *KERNEL_BITS)

    @property
    def dense_rows(self) -> int:
        """Most rows the fixed plan (explicit backend, or `auto` where nothing was measured) runs on
        the kernel; setting it re-plans such a layer (a measured plan stays)."""
        return self._dense_rows

    @dense_rows.setter
    def dense_rows(self, rows: int) -> None:
        self._dense_rows = rows
        if self.plan.source in ("default", "explicit"):
            self._use_plan(replace(default_plan(self.backend, rows), source=self.plan.source, why=self.plan.why))

    def prepare(self, backend: str = "auto", dense_rows: int = 32, cache_dense: bool = False) -> str:
        """Build the chosen backend's kernel tensors (from the stored codes) and the plan of which path
        runs at each row count (measured for `auto`, see autotune.py); returns the backend used."""
        self.backend = pick_backend(self, backend)
        self._kernel, self._alt = build_kernel(self, self.backend), {}
        self.requested, self._dense_rows, self.cache_dense = backend, dense_rows, cache_dense
        self._replan()
        return self.backend

    def kernel_candidates(self) -> list[str]:
        """The low-bit kernels the autotuner times for this layer: the backend's own, and with backend
        `auto` the alternatives that can run its layout here (`q4a8`/`q8a8`, lmopt's C kernels)."""
        own = [self.backend] if self.backend in KERNELS else []
        return own + (alternative_kernels(self) if self.requested == "auto" else [])

    def _kernel_for(self, path: str) -> dict[str, Any]:
        """The tensors of kernel `path`: the backend's, or an alternative's (built on first use)."""
        if path == self.backend:
            return self._kernel
        if path not in self._alt:
            if path not in alternative_kernels(self):
                raise ValueError(f"path '{path}' needs the {path} backend; this layer has {self.backend}")
            self._alt[path] = build_kernel(self, path)
        return self._alt[path]

    def keep_dense_copy(self) -> bool:
        """Allow a dense copy of the weight wherever the plan runs a dense path (faster prompt chunks,
        more memory) instead of de-quantizing it per call; re-plans. False when already allowed."""
        if self.cache_dense:
            return False
        self.cache_dense = True
        self._replan()
        return True

    def drop_dense_copy(self) -> bool:
        """Undo `keep_dense_copy`: free the dense copy and re-plan as the loader prepared the layer
        (dense paths de-quantize per call). False when no copy was allowed."""
        if not self.cache_dense:
            return False
        self.cache_dense = False
        self._replan()
        return True

    def dense_weight(self) -> torch.Tensor | None:
        """The dense copy (N, K) the plan's dense path uses, or None when none is kept."""
        return self._dense

    @classmethod
    def stack(cls, linears: Sequence[QuantLinear]) -> QuantLinear | None:
        """One layer computing [W_1; W_2; ...] for layers that read the same input (q/k/v, gate/up),
        built from their codes on the same backend; None when they differ in layout or settings, or
        when the stacked layer would only de-quantize on every call (nothing gained). The originals
        then run the stacked layer's plan (so fused and separate calls agree) and their dense copies
        become row views of its copy (kept once, not twice)."""
        def settings(lin: QuantLinear) -> tuple:
            return (lin.in_features, lin.bits, lin.group_size, lin.act_quant, lin.backend, lin.requested,
                    lin.dense_rows, lin.cache_dense, lin.qweight.device)
        if len(linears) < 2 or not all(isinstance(lin, QuantLinear) for lin in linears):
            return None
        first = linears[0]
        if len({settings(lin) for lin in linears}) != 1:
            return None
        bias = None
        if any(lin.bias is not None for lin in linears):
            bias = torch.cat([lin.bias.detach() if lin.bias is not None else torch.zeros(lin.out_features)
                              for lin in linears])
        stacked = cls.from_codes(torch.cat([lin.codes() for lin in linears]),
                                 torch.cat([lin.scales.float() for lin in linears]),
                                 torch.cat([lin.zeros.float() for lin in linears]),
                                 first.bits, first.group_size, bias, first.act_quant).to(first.qweight.device)
        if stacked.prepare(first.requested, first.dense_rows, first.cache_dense) != first.backend or \
                all(path == "dequant" for _, path in stacked.plan.tiers):
            return None
        adopted = replace(stacked.plan, source=f"stacked ({stacked.out_features}x{stacked.in_features}), "
                                               f"{stacked.plan.source}")
        start = 0
        for lin in linears:
            dense = stacked._dense
            lin._use_plan(adopted, None if dense is None else dense[start:start + lin.out_features])
            start += lin.out_features
        return stacked

    def _replan(self) -> None:
        if self.requested == "auto":
            self._use_plan(tune(self, self.cache_dense))
        else:
            self._use_plan(default_plan(self.backend, self._dense_rows, "explicit"))

    def _use_plan(self, plan: Plan, dense: torch.Tensor | None = None) -> None:
        """Adopt `plan`; keep a dense copy (`dense`, else de-quantized now) when it uses one and may, and
        the alternative kernels it uses (a kernel the plan passed over cannot win a later re-plan that
        only allows or drops a dense copy, so it is freed)."""
        self.plan = plan
        used = {path for _, path in plan.tiers}
        self._alt = {path: kernel for path, kernel in self._alt.items() if path in used}
        if not (self.cache_dense and plan.dense):
            self._dense = None
        elif dense is not None:
            self._dense = dense
        elif self._dense is None or self._dense.dtype != DENSE[plan.dense]:
            self._dense = self.dequantize(DENSE[plan.dense])

    def run_path(self, path: str, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """x W^T (no bias) by one path (see the module docstring), in that path's output dtype;
        `weight` overrides the dense weight of a bf16/fp32 path (for measuring)."""
        if path in KERNELS:
            y = run_kernel(path, self._kernel_for(path), x.reshape(-1, self.in_features))
            return y.view(*x.shape[:-1], self.out_features)
        x_in = fake_quant_activation(x) if self.act_quant else x
        if path == "dequant":
            return self._linear_per_call(x_in, x.dtype)
        dtype = DENSE[path]
        if weight is None and self._dense is not None and self._dense.dtype == dtype:
            weight = self._dense
        return F.linear(x_in.to(dtype), weight) if weight is not None else self._linear_per_call(x_in.to(dtype), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.run_path(self.plan.path(x.numel() // x.shape[-1]), x).to(x.dtype)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def direct(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """`forward` for a hot loop (the serving engine's decode): a 2-D bf16 input within the plan's
        first row range calls the int4/int8 kernel straight away, anything else goes to `forward`.
        `forward`'s dispatch (plan lookup, path checks, reshapes, dtype casts) costs 6-13 us per call
        at 1 row against 14-57 us of kernel (BENCHMARKS.md), 120 calls per token in SmolLM2."""
        if self.bias is not None:  # (int8-activation layers too: q8a8 rounds its own; w8a8 goes to forward)
            return self.forward
        forward, bf16 = self.forward, torch.bfloat16
        int4_mm = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)  # None: no such backend
        int8_mm = getattr(torch.ops.aten, "_weight_int8pack_mm", None)

        def run(x: torch.Tensor) -> torch.Tensor:
            # read per call: a later re-plan or re-prepare takes effect
            (limit, path), kernel = self.plan.tiers[0], self._kernel
            if x.dim() != 2 or x.shape[0] > limit or x.dtype != bf16:
                return forward(x)
            if path in KERNEL_BITS:
                return native_linear(x, self._kernel_for(path))
            if path != self.backend:
                return forward(x)
            if path == "int4":
                return int4_mm(x.contiguous(), kernel["weight"], kernel["group"], kernel["scales_zeros"])
            offset = kernel.get("offset")  # asymmetric int8 codes: forward's rank-one correction, as one block
            if path != "int8" or (offset is not None and x.shape[0] * self.out_features > CORRECTION_BLOCK):
                return forward(x)
            y = int8_mm(x.contiguous(), kernel["weight"], kernel["scale"])
            return y if offset is None else (y.float() - x.float().sum(-1, keepdim=True) * offset).to(bf16)
        return run


def keep_dense_weights(model: Any) -> int:
    """Let every quantized linear (`QuantLinear`) keep a dense copy of its weight wherever its plan
    runs a dense path (prompt chunks on int4/int8 kernels; every row count where the measured plan
    says dense is faster, e.g. group-wise int8, which has no low-bit kernel) instead of
    de-quantizing it on each call; returns how many were switched. The serving engine does this;
    `lmopt bench` measures prefill both ways."""
    return sum(module.keep_dense_copy() for module in model.modules() if isinstance(module, QuantLinear))


def drop_dense_weights(model: Any) -> int:
    """Undo `keep_dense_weights`; returns how many layers gave their copy back."""
    return sum(module.drop_dense_copy() for module in model.modules() if isinstance(module, QuantLinear))


def dense_copy_mb(model: Any) -> float:
    """Memory held by the quantized layers' dense copies, MB (a storage shared by stacked layers once)."""
    storages = {}
    for module in model.modules():
        if isinstance(module, QuantLinear) and module.dense_weight() is not None:
            storage = module.dense_weight().untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) / 1e6
