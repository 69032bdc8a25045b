"""Continuous batching decisions: token budget, chunked prefill, joining and leaving, slot compaction."""

from __future__ import annotations

from lmopt.serve.kv_cache import SlotTable
from lmopt.serve.scheduler import Scheduler, Sequence


def _seq(name: str, prompt_len: int) -> Sequence:
    return Sequence(name, list(range(1, prompt_len + 1)), params=None)


def _run(sched: Scheduler, plan) -> None:
    """Pretend the forward ran and produced a token for every sequence that needed one."""
    sched.complete(plan)
    for seq in plan.logit_seqs:
        seq.output.append(7)


def test_chunked_prefill_within_budget_then_decode_first() -> None:
    sched = Scheduler(num_slots=2, max_step_tokens=6, prefill_chunk=4)
    a, b = _seq("a", 10), _seq("b", 3)
    sched.add(a), sched.add(b)
    plan = sched.schedule()  # a gets a 4-token chunk, b the remaining 2 of the budget
    assert [(s.request_id, start, n) for s, start, n in plan.prefill] == [("a", 0, 4), ("b", 0, 2)]
    assert plan.logit_seqs == [] and len(plan.inputs.tokens) == 6
    _run(sched, plan)
    plan = sched.schedule()
    assert [(s.request_id, start, n) for s, start, n in plan.prefill] == [("a", 4, 4), ("b", 2, 1)]
    assert plan.logit_seqs == [b]  # b's prompt is done: its last token predicts the first output
    _run(sched, plan)
    plan = sched.schedule()  # b decodes first (one token), a finishes its prompt with the rest
    assert plan.decode == [b] and plan.inputs.positions[0] == 3
    assert [(s.request_id, start, n) for s, start, n in plan.prefill] == [("a", 8, 2)]
    assert plan.inputs.logit_rows == [0, 2] and plan.logit_seqs == [b, a]


def test_waiting_requests_join_when_a_slot_frees_and_slots_stay_compact() -> None:
    sched = Scheduler(num_slots=2, max_step_tokens=16, prefill_chunk=16)
    seqs = [_seq(n, 2) for n in "abc"]
    for s in seqs:
        sched.add(s)
    _run(sched, sched.schedule())
    assert [s.slot for s in seqs[:2]] == [0, 1] and list(sched.waiting) == [seqs[2]]
    move = sched.release(seqs[0])  # a leaves slot 0: b moves down with its 2 cached tokens
    assert move == (1, 0, 2) and seqs[1].slot == 0
    plan = sched.schedule()
    assert plan.decode == [seqs[1]] and seqs[2].slot == 1 and [p[0] for p in plan.prefill] == [seqs[2]]


def test_release_of_a_waiting_request_and_slot_table_errors() -> None:
    sched = Scheduler(num_slots=1, max_step_tokens=4, prefill_chunk=4)
    a, b = _seq("a", 2), _seq("b", 2)
    sched.add(a), sched.add(b)
    sched.schedule()
    assert sched.release(b) is None and not sched.waiting
    table = SlotTable(1)
    assert table.allocate() == 0 and table.free == 0
    assert table.release(0) is None and table.free == 1
