"""`QuantLinear`: a Linear whose weight is stored as low-bit codes, run by the fastest kernel available.

Stored state (what is saved): `qweight` packed codes (N, packed_width) uint8, `scales` (N, G)
float16 and `zeros` (N, G) uint8, optional `bias`. De-quantized weight = (q - zero) * scale per group.

Backends, chosen once by `prepare(backend)` (forward never re-decides):
- `int4`: torch's own CPU int4 kernel `_weight_int4pack_mm_for_cpu` (bf16 activations; weights of
  <= 4 bits). Its grid is (q - 8) * s + z with float z, so our (q - zero) * s becomes
  z = (8 - zero) * s exactly; a short last group (576 = 4 x 128 + 64) runs as kernel groups of 64
  with each scale repeated, which gives the same weights.
- `int8`: `_weight_int8pack_mm` (bf16 activations, per-channel int8 weights); asymmetric codes add
  a rank-1 correction -sum(x) * (zero - 128) * s.
- `w8a8`: oneDNN dynamic quantization (`quantized::linear_dynamic`): activations quantized to int8
  on the fly (per tensor), int8 x int8 GEMM, fp32 in and out.
- `dequant`: de-quantize into the activation dtype on each call and use F.linear; works on any
  device and dtype (the reference the fast paths are tested against).
The int4/int8 kernels are fast for few rows (decode) and slow for many (prefill, where the CPU's
bf16 AMX GEMM wins), so inputs with more than `dense_rows` rows use a dense bf16 weight instead:
de-quantized per call, or kept in memory when `cache_dense` is set (faster prefill, more RAM).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lmopt.compress.quantize.algorithms import dequantize
from lmopt.compress.quantize.kernels import fake_quant_activation, run_kernel
from lmopt.compress.quantize.packing import pack_bits, packed_width, unpack_bits

BACKENDS = ("auto", "int4", "int8", "w8a8", "dequant")
INT4_KERNEL_GROUPS = (32, 64, 128, 256)


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
        self.backend, self.dense_rows, self.cache_dense = "dequant", 32, False
        self._kernel: dict[str, Any] = {}
        self._dense: torch.Tensor | None = None

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
        """The weight (N, K) this layer computes with."""
        return dequantize(self.codes(), self.scales.float(), self.zeros.float(), self.group_size).to(dtype)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}, "
                f"backend={self.backend}{', act=int8' if self.act_quant else ''}")

    def prepare(self, backend: str = "auto", dense_rows: int = 32, cache_dense: bool = False) -> str:
        """Build the chosen backend's kernel tensors (from the stored codes); returns the backend used."""
        from lmopt.compress.quantize.kernels import build_kernel, pick_backend

        self.backend = pick_backend(self, backend)
        self._kernel = build_kernel(self, self.backend)
        self.dense_rows, self.cache_dense = dense_rows, cache_dense
        fast = self.backend in ("int4", "int8")
        self._dense = self.dequantize(torch.bfloat16) if cache_dense and fast else None
        return self.backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self.backend in ("int4", "int8") and rows > self.dense_rows:
            weight = self._dense if self._dense is not None else self.dequantize(torch.bfloat16)
            y = torch.nn.functional.linear(x.to(torch.bfloat16), weight)
        elif self.backend == "dequant":
            x_in = fake_quant_activation(x) if self.act_quant else x
            y = torch.nn.functional.linear(x_in, self.dequantize(x.dtype))
        else:
            y = run_kernel(self, x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)
        y = y.to(x.dtype)
        return y + self.bias.to(y.dtype) if self.bias is not None else y
