"""ggml weight blocks from lmopt's integer codes (code for code), or from float weights (re-quantized).

ggml's legacy types hold 32 consecutive weights of a row per block (little-endian):
- q4_0: fp16 d, then 16 bytes of nibbles; weight = (nibble - 8) * d
- q4_1: fp16 d, fp16 m, then 16 bytes of nibbles; weight = nibble * d + m
- q8_0: fp16 d, then 32 int8 x; weight = x * d
Byte j of the nibbles holds weight j in its low half and weight j + 16 in its high half.

lmopt stores codes q in [0, 2^bits) with fp16 scale s and integer zero z per group of columns
(weight = (q - z) * s). A group whose size is a multiple of 32 covers whole blocks, so each block
takes its group's s and z: q4_0 gets nibble = q - z + 8 with d = s (needs q - z in [-8, 7], true of
every symmetric 4-bit grid), q4_1 gets nibble = q, d = s, m = -z * s (any grid of <= 4 bits; m
rounds to fp16, exact for symmetric grids since z is a power of two), q8_0 gets x = q - z, d = s
(any grid whose q - z fits int8; blocks that do not are re-quantized from the de-quantized weights
and counted). Written this way, GPTQ's or AWQ's rounding decisions survive into the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32
QUANT_TYPES = ("q4_0", "q4_1", "q8_0")


@dataclass
class Codes:
    """A quantized weight as lmopt holds it: q (N, K) uint8, scale (N, G) fp16, zero (N, G) uint8."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def dequantize(self) -> torch.Tensor:
        """(N, K) float32: exactly what lmopt computes with."""
        k = self.q.shape[1]
        scale = self.scale.float().repeat_interleave(self.group_size, 1)[:, :k]
        zero = self.zero.float().repeat_interleave(self.group_size, 1)[:, :k]
        return (self.q.float() - zero) * scale

    def rows(self, index: torch.Tensor) -> Codes:
        """The same codes with rows reordered (llama.cpp's q/k permutation)."""
        return Codes(self.q[index], self.scale[index], self.zero[index], self.bits, self.group_size)


def why_not_blocks(codes: Codes, ggml_type: str) -> str | None:
    """None when `codes` can be written as `ggml_type` blocks code for code, else the reason."""
    n, k = codes.shape
    if k % BLOCK or codes.group_size % BLOCK:
        return (f"group size {codes.group_size} over {k} columns does not split into ggml's "
                f"{BLOCK}-weight blocks (quantize with group_size 32, 64, 128...)")
    if ggml_type in ("q4_0", "q4_1") and codes.bits > 4:
        return f"{codes.bits}-bit codes do not fit {ggml_type}'s 4 bits"
    if ggml_type == "q4_0":
        signed = codes.q.to(torch.int16) - _per_column(codes.zero, codes.group_size, k).to(torch.int16)
        if signed.min() < -8 or signed.max() > 7:
            return "an asymmetric grid (zero point per group) needs q4_1; q4_0 has none"
    return None


def encode_codes(codes: Codes, ggml_type: str) -> tuple[np.ndarray, int]:
    """(N, K/32 * block bytes) uint8 blocks and the number of blocks that were not code for code."""
    reason = why_not_blocks(codes, ggml_type)
    if reason is not None:
        raise ValueError(reason)
    n, k = codes.shape
    block_group = torch.arange(k // BLOCK) * BLOCK // codes.group_size  # block -> its group
    d = codes.scale[:, block_group].to(torch.float16)  # (N, K/32)
    zero = codes.zero[:, block_group].to(torch.int16)
    q = codes.q.to(torch.int16).view(n, k // BLOCK, BLOCK)
    if ggml_type == "q4_0":
        return _pack(d, None, q - zero.unsqueeze(-1) + 8, 4), 0
    if ggml_type == "q4_1":
        m = (-zero.float() * d.float()).to(torch.float16)
        return _pack(d, m, q, 4), 0
    signed = q - zero.unsqueeze(-1)  # (N, K/32, 32)
    blocks = _pack(d, None, signed, 8)
    misfit = ((signed < -128) | (signed > 127)).any(-1)  # (N, K/32)
    if misfit.any():  # these blocks cannot be exact in int8: round-to-nearest of their weights
        from gguf import GGMLQuantizationType, quants

        fallback = quants.quantize(codes.dequantize().numpy(), GGMLQuantizationType.Q8_0)
        fallback = fallback.reshape(n, k // BLOCK, -1)
        blocks = blocks.reshape(n, k // BLOCK, -1)
        blocks[misfit.numpy()] = fallback[misfit.numpy()]
        blocks = blocks.reshape(n, -1)
    return blocks, int(misfit.sum())


def encode_float(weight: torch.Tensor, ggml_type: str) -> np.ndarray:
    """Round-to-nearest blocks of a float (N, K) weight with gguf's reference quantizer
    (the same arithmetic as llama.cpp's own `quantize_row_*_ref`)."""
    from gguf import GGMLQuantizationType, quants

    return quants.quantize(weight.float().numpy(), GGMLQuantizationType[ggml_type.upper()])


def _per_column(values: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    return values.repeat_interleave(group_size, 1)[:, :k]


def _pack(d: torch.Tensor, m: torch.Tensor | None, values: torch.Tensor, bits: int) -> np.ndarray:
    """Blocks from per-block fp16 d (and m) (N, B) and values (N, B, 32): nibbles or int8 bytes."""
    n, nb, _ = values.shape
    parts = [d.contiguous().numpy().view(np.uint8).reshape(n, nb, 2)]
    if m is not None:
        parts.append(m.contiguous().numpy().view(np.uint8).reshape(n, nb, 2))
    if bits == 4:
        v = values.to(torch.uint8)
        parts.append((v[..., :16] | (v[..., 16:] << 4)).numpy())
    else:
        parts.append(values.to(torch.int8).numpy().view(np.uint8))
    return np.concatenate(parts, axis=-1).reshape(n, -1)
