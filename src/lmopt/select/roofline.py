"""Memory and roofline arithmetic of one model in one number format on one target.

Memory (bytes): weights in the format + KV cache at (context, batch) + activations, against the target's
usable memory (minus a runtime reserve; 75% of unified memory on Apple parts, macOS's default GPU cap).
Activations: one layer's live tensors during prefill, batch x context x (hidden + 2 x intermediate)
values, attention scores not materialized (SDPA/flash attention), plus fp32 logits of the last position.

Speed (a roofline: each phase takes the longer of its compute time and its memory time):
- prefill of `context` tokens, batch b: FLOPs = b x (2 x matrix_params x context + 4 x attention_dim x
  causal_keys), bytes = weights once + KV written; tokens/s = b x context / time;
- decode, batch b, with `context` tokens already in the KV cache (the slowest step of a context-long
  sequence): FLOPs = b x (2 x matrix_params + 4 x attention_dim x KV slots summed over layers),
  bytes = weights read per token + b x KV read; tokens/s = b / time.
`overhead_s` adds a fixed per-step cost (Python, kernel launches) measured on this machine
(`calibrate.py`); the pure roofline has none.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmopt.errors import LmoptError
from lmopt.select.hardware_table import Target
from lmopt.select.model_shape import ModelShape

GB = 1e9
RESERVE_GB = {"gpu": 1.0, "tpu": 0.5, "cpu": 2.0, "apple": 0.0}
"""Memory the runtime itself takes (CUDA context and allocator slack; OS and Python on a CPU host)."""
APPLE_GPU_SHARE = 0.75


@dataclass(frozen=True)
class Format:
    """How weights, KV cache and activations are stored, and which unit runs the matmuls."""

    name: str
    weight_bits: int
    group_size: int | None
    """int4: weights per (fp16 scale, 4-bit zero point) group; int8: None = one fp16 scale per row."""
    vector_bytes: float
    kv_bytes: float
    activation_bytes: float
    compute: str
    """Peak used for the matmuls: "fp32", "bf16", "int8" or "dense" (see `Target.compute_tflops`)."""

    def matrix_bytes(self, rows: int, cols: int) -> float:
        n = rows * cols
        if self.weight_bits >= 16:
            return n * self.weight_bits / 8
        if self.group_size is None:  # per output channel: one fp16 scale per row
            return n * self.weight_bits / 8 + rows * 2
        return n * self.weight_bits / 8 + n / self.group_size * 2.5  # fp16 scale + 4-bit zero


def make_format(name: str, group_size: int = 128) -> Format:
    """fp32, bf16 (fp16 alike), int8 (W8A8, per-channel scales) or int4 (weight-only, computed on the
    faster dense unit)."""
    if name == "fp32":
        return Format("fp32", 32, None, 4, 4, 4, "fp32")
    if name in ("bf16", "fp16"):
        return Format(name, 16, None, 2, 2, 2, "bf16")
    if name == "int8":
        return Format("int8", 8, None, 2, 2, 2, "int8")
    if name == "int4":
        return Format("int4", 4, group_size, 2, 2, 2, "dense")
    raise LmoptError(f"unknown format '{name}' (choose fp32, bf16, int8, int4)")


def weight_bytes(shape: ModelShape, fmt: Format) -> float:
    """Bytes of every stored weight (what must fit in memory)."""
    total = sum(fmt.matrix_bytes(r, c) for r, c in shape.matrices) + shape.vector_params * fmt.vector_bytes
    if shape.embedding:
        total += fmt.matrix_bytes(*shape.embedding)
    return total


def weight_bytes_read(shape: ModelShape, fmt: Format) -> float:
    """Bytes of weights one decode step reads (the untied input embedding is a row lookup: left out)."""
    return sum(fmt.matrix_bytes(r, c) for r, c in shape.matrices) + shape.vector_params * fmt.vector_bytes


def activation_bytes(shape: ModelShape, fmt: Format, context: int, batch: int) -> float:
    return batch * context * (shape.hidden + 2 * shape.intermediate) * fmt.activation_bytes + batch * shape.vocab * 4


def usable_bytes(target: Target) -> float:
    if target.kind == "apple":
        return target.memory_gb * APPLE_GPU_SHARE * GB
    return max(0.0, target.memory_gb - RESERVE_GB[target.kind]) * GB


@dataclass(frozen=True)
class Memory:
    weights: float
    kv_cache: float
    activations: float
    usable: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations

    @property
    def fits(self) -> bool:
        return self.total <= self.usable


def memory(shape: ModelShape, fmt: Format, target: Target, context: int, batch: int) -> Memory:
    return Memory(weight_bytes(shape, fmt), shape.kv_bytes(context, batch, fmt.kv_bytes),
                  activation_bytes(shape, fmt, context, batch), usable_bytes(target))


def _attention_dim(shape: ModelShape) -> int:
    return shape.attention_heads * shape.head_dim


def prefill_tokens_per_s(shape: ModelShape, fmt: Format, target: Target, context: int, batch: int = 1) -> float:
    attention = 4 * _attention_dim(shape) * shape.attention_keys_prefill(context)
    flops = batch * (2 * shape.matrix_params * context + attention)
    moved = weight_bytes_read(shape, fmt) + shape.kv_bytes(context, batch, fmt.kv_bytes)
    seconds = max(flops / (target.compute_tflops(fmt.compute) * 1e12), moved / (target.bandwidth_gbs * GB))
    return batch * context / seconds


def decode_step_seconds(shape: ModelShape, fmt: Format, target: Target, context: int, batch: int = 1,
                        bandwidth_efficiency: float = 1.0) -> float:
    """Roofline time of one decode step (batch tokens) with `context` tokens in the KV cache."""
    flops = batch * (2 * shape.matrix_params + 4 * _attention_dim(shape) * shape.kv_tokens(context))
    moved = weight_bytes_read(shape, fmt) + shape.kv_bytes(context, batch, fmt.kv_bytes)
    return max(flops / (target.compute_tflops(fmt.compute) * 1e12),
               moved / (target.bandwidth_gbs * GB * bandwidth_efficiency))


def decode_tokens_per_s(shape: ModelShape, fmt: Format, target: Target, context: int, batch: int = 1,
                        overhead_s: float = 0.0, bandwidth_efficiency: float = 1.0) -> float:
    return batch / (decode_step_seconds(shape, fmt, target, context, batch, bandwidth_efficiency) + overhead_s)


def cost_per_million(price_per_hour: float | None, tokens_per_s: float) -> float | None:
    """USD per million tokens at `tokens_per_s` on a device rented at `price_per_hour`."""
    if price_per_hour is None or tokens_per_s <= 0:
        return None
    return price_per_hour / 3600 / tokens_per_s * 1e6
