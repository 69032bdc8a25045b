"""Bit packing of integer codes for storage: `bits` bits per value, so size on disk reflects the bits.

Codes (N, K) in [0, 2^bits) are packed row by row, 8 values into `bits` bytes (little-endian bit
order): int4 is 2 values per byte, int3 is 8 values per 3 bytes, int8 is the bytes themselves.
Rows are padded with zeros to a multiple of 8 values.
"""

from __future__ import annotations

import torch


def packed_width(k: int, bits: int) -> int:
    """Bytes per packed row of k values."""
    return k if bits == 8 else (k + 7) // 8 * bits


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, K) codes -> (N, packed_width(K, bits)) uint8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if bits == 8:
        return q.to(torch.uint8).contiguous()
    n, k = q.shape
    pad = (-k) % 8
    values = torch.nn.functional.pad(q.to(torch.int64), (0, pad)).view(n, -1, 8)  # (N, K/8, 8)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    words = (values << shifts).sum(-1)  # (N, K/8): 8*bits significant bits each
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    return ((words.unsqueeze(-1) >> byte_shifts) & 0xFF).to(torch.uint8).view(n, -1)


def unpack_bits(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of `pack_bits`: (N, packed_width) uint8 -> (N, k) uint8 codes."""
    if bits == 8:
        return packed[:, :k]
    n = packed.shape[0]
    if bits == 4:  # byte j holds values 2j (low nibble) and 2j + 1: two uint8 ops, no int64 pass
        return torch.stack((packed & 15, packed >> 4), dim=-1).view(n, -1)[:, :k]
    chunks = packed.to(torch.int64).view(n, -1, bits)  # (N, K/8, bits bytes)
    words = (chunks << (torch.arange(bits, dtype=torch.int64) * 8)).sum(-1)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    values = (words.unsqueeze(-1) >> shifts) & (2 ** bits - 1)  # (N, K/8, 8)
    return values.view(n, -1)[:, :k].to(torch.uint8)
