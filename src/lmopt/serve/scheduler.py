"""Continuous batching: which tokens of which requests run in the next iteration.

Every iteration (one forward pass) the scheduler
1. gives each running request that is past its prompt one decode token (running requests first, so
   a new arrival never stalls the ones already streaming),
2. spends the rest of the token budget on prompt chunks: first requests already mid-prompt, then
   waiting requests, admitted as soon as a KV slot is free (chunked prefill: a long prompt is split
   over several iterations instead of blocking every decode for its whole length).
Finished or aborted requests leave the batch at once and free their slot for the next iteration.
No torch here; the engine turns a `Plan` into tensors.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lmopt.serve.kv_cache import SlotTable
from lmopt.serve.runner import Segment, StepInputs


@dataclass
class Sequence:
    """One request's tokens and progress. `computed` = tokens whose K/V are in the cache."""

    request_id: str
    prompt: list[int]
    params: Any
    output: list[int] = field(default_factory=list)
    slot: int = -1
    computed: int = 0
    arrival: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    finish_reason: str | None = None
    state: Any = None
    """Engine-owned per-request state (generator, detokenizer, callback)."""

    @property
    def in_prefill(self) -> bool:
        return self.computed < len(self.prompt)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.output)


@dataclass
class Plan:
    """One iteration: decode rows, prefill chunks (seq, start, length), and the step's inputs."""

    decode: list[Sequence]
    prefill: list[tuple[Sequence, int, int]]
    inputs: StepInputs
    logit_seqs: list[Sequence]
    """The sequences that get a new token from this step, in the order of inputs.logit_rows."""


class Scheduler:
    """Waiting queue, running batch and KV slots; all methods run on the engine thread."""

    def __init__(self, num_slots: int, max_step_tokens: int, prefill_chunk: int) -> None:
        self.slots = SlotTable(num_slots)
        self.max_step_tokens, self.prefill_chunk = max_step_tokens, prefill_chunk
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Plan | None:
        decode = sorted((s for s in self.running if not s.in_prefill), key=lambda s: s.slot)
        budget = self.max_step_tokens - len(decode)
        prefill: list[tuple[Sequence, int, int]] = []
        for seq in sorted((s for s in self.running if s.in_prefill), key=lambda s: s.arrival):
            budget = self._chunk(seq, budget, prefill)
        while self.waiting and self.slots.free and budget > 0:
            seq = self.waiting.popleft()
            seq.slot = self.slots.allocate()
            self.running.append(seq)
            budget = self._chunk(seq, budget, prefill)
        if not decode and not prefill:
            return None
        return self._plan(decode, prefill)

    def _chunk(self, seq: Sequence, budget: int, prefill: list[tuple[Sequence, int, int]]) -> int:
        n = min(len(seq.prompt) - seq.computed, budget, self.prefill_chunk)
        if n > 0:
            prefill.append((seq, seq.computed, n))
        return budget - max(n, 0)

    def _plan(self, decode: list[Sequence], prefill: list[tuple[Sequence, int, int]]) -> Plan:
        tokens = [s.output[-1] for s in decode]
        positions = [s.computed for s in decode]
        slots = [s.slot for s in decode]
        rows, logit_seqs = list(range(len(decode))), list(decode)
        segments = []
        for seq, start, n in prefill:
            segments.append(Segment(len(tokens), n, seq.slot, start))
            tokens += seq.prompt[start:start + n]
            positions += range(start, start + n)
            slots += [seq.slot] * n
            if start + n == len(seq.prompt):  # the prompt's last token predicts the first output
                rows.append(len(tokens) - 1)
                logit_seqs.append(seq)
        inputs = StepInputs(tokens, positions, slots, len(decode), segments, rows)
        return Plan(decode, prefill, inputs, logit_seqs)

    def complete(self, plan: Plan) -> None:
        """The plan ran: its tokens are now cached."""
        for seq in plan.decode:
            seq.computed += 1
        for seq, _, n in plan.prefill:
            seq.computed += n

    def release(self, seq: Sequence) -> tuple[int, int, int] | None:
        """Remove a running or waiting request; returns a cache move (src, dst, length) if needed."""
        if seq in self.waiting:
            self.waiting.remove(seq)
            return None
        if seq not in self.running:
            return None
        self.running.remove(seq)
        move = self.slots.release(seq.slot)
        if move is None:
            return None
        src, dst = move
        mover = next(s for s in self.running if s.slot == src)
        mover.slot = dst
        return src, dst, mover.computed
