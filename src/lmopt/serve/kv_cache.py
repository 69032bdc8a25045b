"""The engine's KV cache: pre-allocated per-request slots, sized from a memory limit, kept compact.

Every layer owns k and v tensors of shape (slots, kv_heads, max_len, head_dim). A running request
holds one slot for its whole life (prompt + generated tokens <= max_len). Slots are kept compact:
the running requests always occupy slots 0..n-1, so a decode step reads K/V through a view
`k[:n, :, :L]` with no gather copy. When a request leaves slot i, the request in the last slot moves
into the hole (one copy of its cached tokens, a few hundred KB).

Why slots and not paged blocks: on a CPU the decode step is bound by reading weights and cache, and a
block table would make every step gather the cache into a contiguous batch (as much traffic as the
weights themselves at batch 16). The price is memory: a slot reserves max_len tokens, so the memory
limit buys `limit / (max_len * bytes_per_token)` concurrent requests.
"""

from __future__ import annotations

from typing import Any

import torch

from lmopt.errors import LmoptError


def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """K and V of one token in every layer."""
    return 2 * num_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def slots_for_memory(memory_mb: float, max_len: int, per_token: int, max_batch: int) -> int:
    """How many max_len slots fit in memory_mb (at most max_batch); an error when not even one does."""
    per_slot = max_len * per_token
    slots = min(max_batch, int(memory_mb * 2**20 // per_slot))
    if slots < 1:
        raise LmoptError(f"kv_cache_mb: {memory_mb} MB does not hold one request of max_model_len {max_len} "
                         f"({per_slot / 2**20:.1f} MB needed); raise kv_cache_mb or lower max_model_len")
    return slots


class KVCache:
    """K/V tensors for every layer and slot; zero-filled so masked positions are finite."""

    def __init__(self, num_layers: int, num_slots: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: Any = "cpu") -> None:
        shape = (num_slots, kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots, self.max_len = num_slots, max_len

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def write(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
        """Store the new tokens' k, v (N, KVH, D) at (slots[i], positions[i]) for every token i."""
        self.k[layer][slots, :, positions] = k
        self.v[layer][slots, :, positions] = v

    def write_one(self, layer: int, slot: int, position: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one token's k, v (KVH, D) at (slot, position): plain indexing, a third of `write`'s
        index_put cost with index tensors, which a batch-1 decode pays twice per layer per token."""
        self.k[layer][slot, :, position] = k
        self.v[layer][slot, :, position] = v

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached tokens of slot src into slot dst (compaction)."""
        for cache in self.k + self.v:
            cache[dst, :, :length] = cache[src, :, :length]


class SlotTable:
    """Which request holds which slot; occupied slots are always 0..n-1 (see the module docstring)."""

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self.used = 0

    @property
    def free(self) -> int:
        return self.num_slots - self.used

    def allocate(self) -> int:
        if self.used >= self.num_slots:
            raise RuntimeError("no free KV slot")  # the scheduler checks `free` first
        self.used += 1
        return self.used - 1

    def release(self, slot: int) -> tuple[int, int] | None:
        """Free `slot`; returns (src, dst) when the last slot's request must move into the hole."""
        if not 0 <= slot < self.used:
            raise RuntimeError(f"slot {slot} is not in use")
        self.used -= 1
        last = self.used
        return (last, slot) if slot != last else None
