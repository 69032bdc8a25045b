"""Kernel tensors and calls for `QuantLinear` backends (see runtime.py for what each backend is).

Each backend turns the stored codes into the layout its kernel wants, once, in `build_kernel`.
`q4a8`/`q8a8` (lmopt's own C kernels, native.py) are also alternative kernels of 4- and 8-bit
layers: the autotuner times them with the backend's own and keeps the fastest per row range
(`alternative_kernels`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from lmopt.compress.quantize import native
from lmopt.compress.quantize.algorithms import expand_groups
from lmopt.errors import LmoptError
from lmopt.hardware import cpu_flags

CORRECTION_BLOCK = 1 << 18
"""Outputs corrected per block for asymmetric int8 codes (1 MB of fp32 temporaries)."""


def _has(op: str) -> bool:
    return hasattr(torch.ops.aten, op)


def int4_kernel_group(k: int, group_size: int) -> int | None:
    """Largest group size the int4 kernel takes that splits every one of our groups (the shorter
    last one too), so repeating each scale gives the same weights; None when none does."""
    last = k % group_size or group_size
    for g in (256, 128, 64, 32):
        if group_size % g == 0 and last % g == 0:
            return g
    return None


def native_kernel(layer: Any) -> str | None:
    """lmopt's C kernel for this layer's layout ("q4a8"/"q8a8") when it is built here with its vector
    path and the layer is on a CPU; else None. A layer with int8 activations (W8A8) may take q8a8: it
    rounds activations to int8 too, per row and block of 32 (a finer grid than w8a8's one scale per
    tensor), and on CPUs without VNNI it is the fast int8 x int8 path (oneDNN's falls to 7 bits)."""
    if layer.qweight.device.type != "cpu" or (layer.act_quant and layer.bits != 8):
        return None
    name = native.kernel_for(layer.bits, layer.group_size, layer.in_features, layer.out_features)
    return name if name and native.available() else None


def alternative_kernels(layer: Any) -> list[str]:
    """Kernels besides the backend's own that the autotuner should time for this layer."""
    name = native_kernel(layer)
    return [name] if name and name != layer.backend else []


def pick_backend(layer: Any, backend: str) -> str:
    """Resolve `auto` (and check an explicit choice) for this layer on this device."""
    on_cpu = layer.qweight.device.type == "cpu"
    if layer.act_quant:
        ok = on_cpu and layer.bits == 8 and layer.group_size == layer.in_features
        if backend in ("auto", "w8a8") and ok and "x86" in torch.backends.quantized.supported_engines:
            return "w8a8"
        return "dequant"
    if backend == "auto":
        if on_cpu and layer.bits <= 4 and _has("_weight_int4pack_mm_for_cpu") and \
                int4_kernel_group(layer.in_features, layer.group_size) and layer.out_features % 16 == 0:
            return "int4"
        per_channel = layer.group_size == layer.in_features
        if on_cpu and layer.bits == 8 and per_channel and _has("_weight_int8pack_mm"):
            return "int8"
        return "dequant"
    if backend in native.KERNEL_BITS:
        if native_kernel(layer) != backend:
            raise LmoptError(f"backend '{backend}' cannot run a {layer.bits}-bit, group {layer.group_size} layer "
                             f"({layer.out_features}x{layer.in_features}) here: q4a8 takes 2-4 bits, q8a8 5-8, "
                             "both groups of whole 32-column blocks, rows in 16s, a CPU, and a C compiler "
                             "with AVX2 or AVX-512 VNNI (see lmopt.compress.quantize.native)")
        return backend
    if backend not in ("int4", "int8", "dequant", "w8a8"):
        raise LmoptError(f"unknown quantized backend '{backend}' "
                         "(choose auto, int4, int8, q4a8, q8a8, w8a8, dequant)")
    if backend in ("int4", "int8") and pick_backend(layer, "auto") != backend:
        raise LmoptError(f"backend '{backend}' cannot run a {layer.bits}-bit, group {layer.group_size} layer "
                         f"({layer.out_features}x{layer.in_features}) on {layer.qweight.device.type}")
    return backend


def build_kernel(layer: Any, backend: str) -> dict[str, Any]:
    """The tensors `run_kernel` needs for `backend` (empty for dequant)."""
    if backend == "dequant":
        return {}
    q = layer.codes()  # (N, K) uint8
    scale, zero = layer.scales.float(), layer.zeros.float()  # (N, G)
    if backend in native.KERNEL_BITS:
        return native.pack_weights(q, scale, zero, layer.group_size, layer.bits)
    if backend == "int4":
        g = int4_kernel_group(layer.in_features, layer.group_size)
        k = layer.in_features
        s = expand_groups(scale, layer.group_size, k)[:, ::g]  # (N, K/g): one entry per kernel group
        z = expand_groups(zero, layer.group_size, k)[:, ::g]
        sz = torch.stack([s, (8 - z) * s], dim=-1).transpose(0, 1).contiguous()  # (K/g, N, 2)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        return {"weight": packed, "scales_zeros": sz.to(torch.bfloat16), "group": g}
    signed = (q.to(torch.int16) - 128).to(torch.int8)  # (N, K) codes in [-128, 127]
    if backend == "int8":
        offset = (zero[:, 0] - 128) * scale[:, 0]  # 0 for symmetric codes
        kernel = {"weight": signed, "scale": scale[:, 0].to(torch.bfloat16)}
        return kernel if not offset.any() else {**kernel, "offset": offset}
    weight = torch._make_per_channel_quantized_tensor(
        signed.contiguous(), scale[:, 0].double(), (zero[:, 0] - 128).long(), 0)
    return {"packed": torch.ops.quantized.linear_prepack(weight, None)}


def run_kernel(backend: str, kernel: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """y (M, N) for x (M, K) with `kernel` = build_kernel(layer, backend) (int4, int8, q4a8, q8a8, w8a8)."""
    if backend in native.KERNEL_BITS:
        return native.linear(x, kernel)
    if backend == "int4":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(torch.bfloat16).contiguous(), kernel["weight"], kernel["group"], kernel["scales_zeros"])
    if backend == "int8":
        y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), kernel["weight"],
                                               kernel["scale"])
        if "offset" in kernel:  # asymmetric codes: (q - z) s = (q - 128) s - (z - 128) s
            _subtract_rank_one(y, x.float().sum(-1, keepdim=True), kernel["offset"])
        return y
    return torch.ops.quantized.linear_dynamic(x.float().contiguous(), kernel["packed"], w8a8_reduce_range())


@lru_cache(maxsize=1)
def w8a8_reduce_range() -> bool:
    """Whether w8a8 rounds activations to 7 bits (0..127) instead of 8: on x86 CPUs without VNNI the
    int8 GEMM multiplies u8 activations by s8 weights with vpmaddubsw, whose int16 pair sums saturate
    for full-range activations (2 * 255 * 128 > 32767), silently wrong outputs (seen on a 2-core AVX2
    EPYC: 21 of 384 outputs off, by up to 0.79); 7 bits cannot saturate (2 * 127 * 128 = 32512). PyTorch's
    x86 qconfigs set `reduce_range` for the same reason. VNNI's vpdpbusd sums into int32."""
    return "avx512_vnni" not in cpu_flags() and "amx_int8" not in cpu_flags()


def _subtract_rank_one(y: torch.Tensor, column: torch.Tensor, row: torch.Tensor) -> None:
    """y -= column (M, 1) * row (N,), in place, computed in fp32 a block of rows at a time: a whole
    (M, N) fp32 correction is 4x the bf16 output (50 MB for a 256-token prompt through a 49152-word
    lm_head), for the same result rounded once to y's dtype."""
    step = max(1, CORRECTION_BLOCK // y.shape[-1])
    for start in range(0, y.shape[0], step):
        rows = slice(start, start + step)
        y[rows] = y[rows].float() - column[rows] * row


def fake_quant_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-tensor asymmetric uint8 round trip of x: what the w8a8 kernel does to its input (127
    levels where `w8a8_reduce_range()`, else 255)."""
    levels = 127 if w8a8_reduce_range() else 255
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = ((hi - lo) / levels).clamp(min=1e-8)
    zero = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, levels) - zero) * scale
