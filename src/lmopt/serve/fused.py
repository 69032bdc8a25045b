"""One matmul for q/k/v and one for gate/up: fused projections for the runner's hot loop.

At batch 1 a decode step is a chain of small GEMVs, and on CPU each call has a fixed cost (kernel
dispatch, oneDNN set-up) comparable to its arithmetic: three q/k/v GEMVs cost about twice one GEMV
of the stacked (q + k + v) weight, same for gate/up (BENCHMARKS.md#serving). The runner therefore
computes projections that read the same input as one stacked matrix and splits the output.

The stacked weight is a copy (the model itself is left untouched, so it can still be saved or
used elsewhere): about 80% of the decoder weights, a cost the engine config can turn off
(`fuse_projections`). Quantized layers are stacked by `QuantLinear.stack`: one `QuantLinear` from
their integer codes on the same backend (their dense prompt-chunk copies, when kept, become row views
of the stacked one's, so that copy is not doubled); layers of different kinds or grids are not fused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lmopt.compress.quantize.runtime import QuantLinear


class FusedLinear(torch.nn.Module):
    """y = x [W_1; W_2; ...]^T (+ b), returned split back into one tensor per original Linear."""

    def __init__(self, inner: Any, sizes: list[int]) -> None:
        super().__init__()
        self.inner, self.sizes = inner, sizes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.inner(x).split(self.sizes, dim=-1)


class _Dense(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def fuse_linears(linears: list[Any]) -> FusedLinear | None:
    """A `FusedLinear` computing every one of `linears` (which share their input), or None when
    they cannot be stacked (mixed kinds, dtypes, input widths or quantization grids)."""
    if len(linears) < 2 or len({lin.in_features for lin in linears}) != 1:
        return None
    sizes = [lin.out_features for lin in linears]
    if all(type(lin) is torch.nn.Linear for lin in linears):
        if len({(lin.weight.dtype, lin.weight.device) for lin in linears}) != 1:
            return None
        with torch.no_grad():
            weight = torch.cat([lin.weight for lin in linears])  # (sum N, K)
            bias = None
            if any(lin.bias is not None for lin in linears):
                bias = torch.cat([lin.bias if lin.bias is not None else weight.new_zeros(lin.out_features)
                                  for lin in linears])
        return FusedLinear(_Dense(weight, bias), sizes)
    if all(isinstance(lin, QuantLinear) for lin in linears):
        stacked = QuantLinear.stack(linears)
        return FusedLinear(stacked, sizes) if stacked is not None else None
    return None
