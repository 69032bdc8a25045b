"""Drives a Hugging Face llama-family model layer by layer over the engine's flat token batch.

The engine does not call the model's `forward`: HF's forward wants a rectangular (batch, seq)
input, one position per column and a cache object per layer, while an iteration of continuous
batching holds decode tokens of many sequences at different positions plus prefill chunks. So the
runner calls the model's own submodules (embedding, each layer's norms, q/k/v/o projections and MLP,
final norm, lm_head) on a flat (N, hidden) batch, and does attention itself over the KV cache
(`attention.py`). Calling the submodules means any module swapped in by quantization or pruning
(a quantized linear, a smaller MLP) runs unchanged, with its own fast kernel.

Supported: the llama family's layer layout (llama, mistral without sliding window, qwen2, qwen3
with its q/k norms). Parity with `transformers.generate` is checked by tests/serve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lmopt.compress.quantize.runtime import QuantLinear
from lmopt.errors import LmoptError
from lmopt.serve.attention import (
    apply_rotary,
    decode_attention,
    decode_mask,
    one_row_rms_norm,
    prefill_attention,
    prefill_mask,
    rotary_tables,
)
from lmopt.serve.fused import FusedLinear, fuse_linears
from lmopt.serve.kv_cache import KVCache, bytes_per_token
from lmopt.serve.native_ops import NativeRowOps, native_attention_limit, native_rope_attend

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SILU_MODULES = ("SiLU", "SiLUActivation")
"""torch's and transformers' SiLU modules: an MLP with one of these may run its activation in C."""


@dataclass
class Segment:
    """A prefill chunk: `length` tokens at flat offset `offset`, for `slot`, after `start` cached ones."""

    offset: int
    length: int
    slot: int
    start: int


@dataclass
class StepInputs:
    """One iteration's tokens, flattened: decode tokens first (one per sequence), then prefill chunks."""

    tokens: list[int]
    positions: list[int]
    slots: list[int]
    num_decode: int
    segments: list[Segment] = field(default_factory=list)
    logit_rows: list[int] = field(default_factory=list)
    """Flat indices whose next-token distribution is needed (decode rows, last token of a prompt)."""


def check_supported(model: Any) -> None:
    """Raise LmoptError unless the model has the llama-family layer layout the runner drives."""
    config = model.config
    kind = getattr(config, "model_type", "?")
    if kind not in SUPPORTED_TYPES:
        raise LmoptError(f"model type '{kind}' is not supported by the lmopt engine "
                         f"(supported: {', '.join(SUPPORTED_TYPES)}); try --engine vllm")
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", kind == "mistral"):
        raise LmoptError(f"model type '{kind}' with sliding-window attention is not supported by the "
                         "lmopt engine; try --engine vllm")


def _llama_mlp(mlp: Any) -> bool:
    """True for the gated MLP down(act(gate(x)) * up(x)) the fused path reproduces."""
    return all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


class ModelRunner:
    """Owns no weights: a view on the model's submodules plus the shapes the KV cache needs."""

    def __init__(self, model: Any, fuse: bool = True) -> None:
        check_supported(model)
        self.model = model
        base = getattr(model, model.base_model_prefix)
        self.embed, self.layers, self.norm = base.embed_tokens, base.layers, base.norm
        self.rotary, self.lm_head = base.rotary_emb, model.lm_head
        config = model.config
        self.num_heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.scale = self.layers[0].self_attn.scaling
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device
        self.max_positions = getattr(config, "max_position_embeddings", None)
        norms = [self.norm]
        for layer in self.layers:
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
        self.fused_norm = all(type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon")
                              for m in norms)
        # per layer: stacked q/k/v and gate/up projections, or None where they cannot be fused
        self.qkv: list[FusedLinear | None] = [None] * len(self.layers)
        self.gate_up: list[FusedLinear | None] = [None] * len(self.layers)
        for i, layer in enumerate(self.layers if fuse else []):
            attn, mlp = layer.self_attn, layer.mlp
            self.qkv[i] = fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
            if _llama_mlp(mlp):
                self.gate_up[i] = fuse_linears([mlp.gate_proj, mlp.up_proj])
        self.plan = [_LayerPlan.build(layer, self.qkv[i], self.gate_up[i], self.fused_norm)
                     for i, layer in enumerate(self.layers)]
        # a batch-1 decode token's rotary, cache write and attention in one C call, where it applies
        on_cpu = self.device.type == "cpu"
        self.rope_attend = native_rope_attend(self.num_heads, self.kv_heads, self.head_dim, self.scale,
                                              self.dtype) if on_cpu else None
        # ... up to the cached length where it measured faster than SDPA on this CPU
        self.rope_attend_limit = 0 if self.rope_attend is None else native_attention_limit(
            self.num_heads, self.kv_heads, self.head_dim, self.max_positions or 8192, torch.get_num_threads())
        # and its norms, residual adds and SiLU (needs RMSNorms, fused gate/up and a SiLU MLP everywhere)
        row_ops = NativeRowOps.create(self.dtype) if on_cpu and self.fused_norm else None
        self.row_ops = row_ops if row_ops and all(p.gate_up_joint is not None for p in self.plan) else None
        self.final_norm = _rms_norm(self.norm, self.fused_norm)
        self.final_rms = (self.norm.weight, self.norm.variance_epsilon) if self.fused_norm else None

    def token_bytes(self) -> int:
        return bytes_per_token(len(self.layers), self.kv_heads, self.head_dim, self.dtype)

    def new_cache(self, num_slots: int, max_len: int) -> KVCache:
        return KVCache(len(self.layers), num_slots, self.kv_heads, max_len, self.head_dim, self.dtype,
                       self.device)

    @torch.inference_mode()
    def forward(self, inp: StepInputs, cache: KVCache) -> torch.Tensor:
        """Run one iteration; returns float32 logits (len(logit_rows), vocab)."""
        dev = self.device
        tokens = torch.tensor(inp.tokens, dtype=torch.long, device=dev)
        x = self.embed(tokens)  # (N, hidden)
        step = _Step.build(inp, x, self.rotary, self.num_heads // self.kv_heads)
        if step.one is not None and self.row_ops is not None and x.dtype == self.dtype and inp.logit_rows == [0]:
            return self._forward_one(x.contiguous(), step, cache)
        for i, plan in enumerate(self.plan):
            x = x + self._attention(i, plan, plan.in_norm(x), step, cache)
            x = x + plan.mlp(plan.post_norm(x))
        rows = torch.tensor(inp.logit_rows, dtype=torch.long, device=dev)
        return self.lm_head(self.final_norm(x.index_select(0, rows))).float()

    def _forward_one(self, x: torch.Tensor, step: _Step, cache: KVCache) -> torch.Tensor:
        """`forward` for a single token (batch-1 decode) with the small ops in C (`native_ops.py`):
        x (1, hidden) is the residual stream, updated in place; each add + norm is one call."""
        ops, plans = self.row_ops, self.plan
        h = ops.add_norm(x, None, *plans[0].in_rms)
        for i, plan in enumerate(plans):
            h = ops.add_norm(x, self._attention(i, plan, h, step, cache), *plan.post_rms)
            mlp_out = plan.down(ops.silu_mul(plan.gate_up_joint(h)))
            h = ops.add_norm(x, mlp_out, *(plans[i + 1].in_rms if i + 1 < len(plans) else self.final_rms))
        return self.lm_head(h).float()  # the step's only logit row

    def _attention(self, layer_idx: int, plan: _LayerPlan, h: torch.Tensor, step: _Step,
                   cache: KVCache) -> torch.Tensor:
        n, d = h.shape[0], self.head_dim
        if plan.qkv_joint is not None:  # one (N, (H + 2 KVH) D) output: rotate q and k in one go
            out = plan.qkv_joint(h)
            if step.one is not None and self.rope_attend is not None and out.dtype == self.dtype \
                    and step.one[1] < self.rope_attend_limit:
                return plan.o_proj(self.rope_attend(out.contiguous(), *step.rope, cache.k[layer_idx],
                                                    cache.v[layer_idx], *step.one))
            width = (self.num_heads + self.kv_heads) * d
            qk = apply_rotary(out[:, :width].view(n, -1, d), *step.rope)  # (N, H + KVH, D)
            q, k, v = qk[:, :self.num_heads], qk[:, self.num_heads:], out[:, width:].view(n, -1, d)
        else:
            q, k, v = plan.qkv(h)
            q, k, v = q.view(n, -1, d), k.view(n, -1, d), v.view(n, -1, d)  # (N, H, D), (N, KVH, D) x2
            if plan.qk_norm is not None:  # qwen3 normalizes q and k per head before the rotation
                q, k = plan.qk_norm[0](q), plan.qk_norm[1](k)
            q, k = apply_rotary(q, *step.rope), apply_rotary(k, *step.rope)
        if step.one is not None:  # a single token (batch-1 decode): (slot, position) as ints
            cache.write_one(layer_idx, *step.one, k[0], v[0])
        else:
            cache.write(layer_idx, step.slots, step.positions, k, v)
        kc, vc = cache.k[layer_idx], cache.v[layer_idx]
        parts = []
        if step.num_decode:
            kd, vd = step.decode_kv(kc, vc)
            parts.append(decode_attention(q[:step.num_decode], kd, vd, step.decode_mask, self.scale))
        for seg, mask in zip(step.segments, step.segment_masks, strict=True):
            end = seg.start + seg.length
            parts.append(prefill_attention(q[seg.offset:seg.offset + seg.length], kc[seg.slot, :, :end],
                                           vc[seg.slot, :, :end], mask, self.scale))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)  # (N, H, D), in flat-batch order
        return plan.o_proj(out.reshape(n, -1))


def _rms_norm(module: Any, fused: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """HF's RMSNorm in 1 fused op (fp32) or 3 (bf16: normalize in fp32, round, then scale, as HF does)
    instead of its 8, which matters 61 times per token. A single bf16 row (batch-1 decode) goes
    through `one_row_rms_norm` instead: 8 us against 14 on the CPUs measured (BENCHMARKS.md)."""
    if not fused:
        return module.forward
    weight, eps = module.weight, module.variance_epsilon
    shape = tuple(weight.shape)

    def norm(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, shape, weight, eps)
        if x.shape[0] == 1:
            return weight * one_row_rms_norm(x, eps)
        return weight * F.rms_norm(x.float(), shape, None, eps).to(x.dtype)
    return norm


def _direct(module: Any) -> Callable[[torch.Tensor], Any]:
    """The module's computation without nn.Module.__call__ (no hook dispatch: a few microseconds per
    call, ~10 calls per layer per decode step); plain Linears become F.linear on their tensors."""
    if type(module) is torch.nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    if isinstance(module, FusedLinear):
        inner, sizes = _direct(module.inner), module.sizes
        return lambda x: inner(x).split(sizes, dim=-1)
    if isinstance(module, QuantLinear):
        return module.direct()  # its kernel without forward's dispatch, for the decode rows
    return module.forward


@dataclass
class _LayerPlan:
    """One decoder layer's pieces resolved once, so the hot loop does no module attribute lookups."""

    in_norm: Callable[[torch.Tensor], torch.Tensor]
    post_norm: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], Any]
    """h (N, hidden) -> (q, k, v), each (N, heads * head_dim)."""
    qk_norm: tuple[Any, Any] | None
    qkv_joint: Callable[[torch.Tensor], torch.Tensor] | None
    """The stacked q/k/v matmul without the split, when there is one and no q/k norm."""
    o_proj: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]
    in_rms: tuple[torch.Tensor, float] | None = None
    post_rms: tuple[torch.Tensor, float] | None = None
    """The norms' (weight, eps), for the C add + norm of a batch-1 step (RMSNorms only)."""
    gate_up_joint: Callable[[torch.Tensor], torch.Tensor] | None = None
    """The stacked gate/up matmul without the split, when the MLP is SiLU(gate) * up (C `silu_mul`)."""
    down: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def build(cls, layer: Any, qkv: FusedLinear | None, gate_up: FusedLinear | None,
              fused_norm: bool) -> _LayerPlan:
        attn, mlp = layer.self_attn, layer.mlp
        if qkv is None:
            q, k, v = (_direct(attn.q_proj), _direct(attn.k_proj), _direct(attn.v_proj))
            qkv_fn = lambda h: (q(h), k(h), v(h))  # noqa: E731
        else:
            qkv_fn = _direct(qkv)
        mlp_fn = mlp
        if gate_up is not None:
            both, down, act = _direct(gate_up), _direct(mlp.down_proj), mlp.act_fn

            def mlp_fn(h: torch.Tensor) -> torch.Tensor:
                gate, up = both(h)
                return down(act(gate) * up)
        qk_norm = (attn.q_norm, attn.k_norm) if hasattr(attn, "q_norm") else None
        joint = _direct(qkv.inner) if qkv is not None and qk_norm is None else None
        rms = lambda norm: (norm.weight, norm.variance_epsilon) if fused_norm else None  # noqa: E731
        silu = gate_up is not None and type(mlp.act_fn).__name__ in SILU_MODULES
        return cls(_rms_norm(layer.input_layernorm, fused_norm),
                   _rms_norm(layer.post_attention_layernorm, fused_norm),
                   qkv_fn, qk_norm, joint, _direct(attn.o_proj), mlp_fn,
                   rms(layer.input_layernorm), rms(layer.post_attention_layernorm),
                   _direct(gate_up.inner) if silu else None, _direct(mlp.down_proj) if silu else None)


@dataclass
class _Step:
    """Per-iteration tensors shared by every layer: where tokens go, rotary tables, masks."""

    positions: torch.Tensor
    slots: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]
    num_decode: int
    decode_mask: torch.Tensor | None
    decode_slots: torch.Tensor | None
    span: int
    contiguous: bool
    segments: list[Segment]
    segment_masks: list[torch.Tensor]
    one: tuple[int, int] | None = None
    """(slot, position) when the iteration holds a single token."""

    @classmethod
    def build(cls, inp: StepInputs, x: torch.Tensor, rotary: Any, groups: int) -> _Step:
        dev = x.device
        positions = torch.tensor(inp.positions, dtype=torch.long, device=dev)
        slots = torch.tensor(inp.slots, dtype=torch.long, device=dev)
        cos, sin = rotary(x, positions[None])  # (1, N, D) each, HF's own rotary (any rope scaling)
        b, span, mask = inp.num_decode, 0, None
        if b:
            span = max(inp.positions[:b]) + 1
            # one decode row attends to all `span` cached tokens: no mask (SDPA is faster without)
            mask = decode_mask(positions[:b] + 1, span) if b > 1 else None
        masks = [prefill_mask(s.start, s.length, groups, dev) for s in inp.segments]
        # Compact slots usually put decode rows at 0..b-1: then K/V is a view, not a gather copy.
        contiguous = inp.slots[:b] == list(range(b))
        one = (inp.slots[0], inp.positions[0]) if len(inp.tokens) == 1 else None
        return cls(positions, slots, rotary_tables(cos[0], sin[0]), b, mask, slots[:b], span, contiguous,
                   inp.segments, masks, one)

    def decode_kv(self, kc: torch.Tensor, vc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, KVH, span, D) views (or gathers) of the decode rows' cache."""
        if self.contiguous:
            return kc[:self.num_decode, :, :self.span], vc[:self.num_decode, :, :self.span]
        return (kc[:, :, :self.span].index_select(0, self.decode_slots),
                vc[:, :, :self.span].index_select(0, self.decode_slots))
