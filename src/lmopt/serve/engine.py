"""The continuous-batching engine: scheduler + model runner + KV cache + sampling, one loop.

Lifecycle of a request: `add_request` (any thread) puts it in an inbox; the engine thread moves it
to the scheduler's waiting queue, admits it into the running batch when a KV slot is free, runs its
prompt in chunks, then one decode token per iteration; every new token is detokenized, checked
against stop conditions and handed to the request's `on_output` callback; a finished or aborted
request leaves the batch before the next iteration.

    engine = Engine(load_model("smollm2-135m-instruct"), EngineConfig(max_batch=16))
    outs = engine.generate(["The capital of France is"], SamplingParams(max_tokens=8, temperature=0))

`generate` steps the engine in the calling thread; `start()` runs the loop in a background thread
(what the server does, through `AsyncEngine`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmopt.compress.quantize.runtime import keep_dense_weights
from lmopt.hardware import apply_threads
from lmopt.serve.config import EngineConfig
from lmopt.serve.kv_cache import slots_for_memory
from lmopt.serve.metrics import EngineMetrics
from lmopt.serve.runner import ModelRunner
from lmopt.serve.sampling import SamplingParams, sample
from lmopt.serve.scheduler import Scheduler, Sequence
from lmopt.serve.text import Detokenizer, TextStream

log = logging.getLogger("lmopt.serve")


class RequestRejected(ValueError):
    """The request itself is invalid (HTTP 400)."""


class QueueFull(RuntimeError):
    """Too many requests waiting (HTTP 429)."""


class EngineClosed(RuntimeError):
    """The engine is draining or stopped (HTTP 503)."""


@dataclass
class RequestOutput:
    """What one iteration produced for one request."""

    request_id: str
    token_ids: list[int]
    text: str
    """New text, safe to show (stop strings removed, incomplete characters held back)."""
    finish_reason: str | None
    """None while running; "stop", "length", "abort" or "error" at the end."""
    prompt_tokens: int
    completion_tokens: int

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Completion:
    """A finished request, as returned by `Engine.generate`."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int


@dataclass
class _State:
    generator: Any
    detok: Detokenizer
    stream: TextStream
    on_output: Callable[[RequestOutput], None]


class Engine:
    """Owns the model runner, the KV cache and the scheduler (see the module docstring)."""

    def __init__(self, loaded: Any, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        apply_threads(config.threads)
        self.model, self.tokenizer = loaded
        if config.quantized_dense_prefill:
            keep_dense_weights(self.model)
        self.runner = ModelRunner(self.model, fuse=config.fuse_projections)
        max_len = min(config.max_model_len, self.runner.max_positions or config.max_model_len)
        num_slots = slots_for_memory(config.kv_cache_mb, max_len, self.runner.token_bytes(), config.max_batch)
        self.cache = self.runner.new_cache(num_slots, max_len)
        self.max_model_len = max_len
        self.scheduler = Scheduler(num_slots, config.max_step_tokens, config.prefill_chunk)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.metrics = EngineMetrics()
        self.metrics.num_slots = num_slots
        self._lock = threading.Condition()
        self._inbox: deque[Sequence] = deque()
        self._aborts: set[str] = set()
        self._live: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._stop = False
        self.iterations = 0
        """Engine steps taken (a request aborted during step n has left the batch by step n + 1)."""

    # ---- requests (any thread) ----
    def add_request(self, prompt: list[int], params: SamplingParams,
                    on_output: Callable[[RequestOutput], None], request_id: str | None = None) -> str:
        """Queue a tokenized prompt; `on_output` is called (on the engine thread) with each new piece."""
        params.validate()
        if not prompt:
            raise RequestRejected("the prompt is empty")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise RequestRejected(f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                                  f"the context limit of {self.max_model_len} tokens")
        rid = request_id or f"req-{next(self._ids)}"
        state = _State(params.make_generator(), Detokenizer(self.tokenizer), TextStream(params.stop),
                       on_output)
        seq = Sequence(rid, list(prompt), params, state=state)
        with self._lock:
            if not self._accepting:
                raise EngineClosed("the server is shutting down")
            if self.queue_depth() >= self.config.max_queue + self.scheduler.slots.free:
                raise QueueFull(f"too many requests waiting ({self.queue_depth()}); retry later")
            self._inbox.append(seq)
            self._live[rid] = seq
            self._lock.notify()
        return rid

    def abort(self, request_id: str) -> None:
        """Stop a request (client gone): it leaves the batch and frees its slot next iteration."""
        with self._lock:
            if request_id in self._live:
                self._aborts.add(request_id)
                self._lock.notify()

    def queue_depth(self) -> int:
        return len(self._inbox) + len(self.scheduler.waiting)

    def num_unfinished(self) -> int:
        return len(self._live)

    # ---- the loop (engine thread) ----
    def step(self) -> bool:
        """One iteration; False when there was nothing to do."""
        self.iterations += 1
        self._take_inbox()
        plan = self.scheduler.schedule()
        if plan is None:
            # Aborts may just have emptied the batch: without this the gauges would keep the last
            # busy iteration's figures until the next request (the "running stays at 7" bug).
            self._publish_state()
            return False
        try:
            logits = self.runner.forward(plan.inputs, self.cache)
            self.scheduler.complete(plan)
            tokens = sample(logits, [s.params for s in plan.logit_seqs],
                            [s.state.generator for s in plan.logit_seqs])
        except Exception:  # a bug or out-of-memory must not take the server down: fail this batch
            log.exception("engine step failed; failing the requests of this batch")
            for seq in list(self.scheduler.running):
                self._finish(seq, "error")
            self._publish_state()
            return True
        for seq, token in zip(plan.logit_seqs, tokens, strict=True):
            self._append(seq, token)
        self._publish_state(len(tokens), sum(n for _, _, n in plan.prefill))
        return True

    def _publish_state(self, generated: int = 0, prompt_tokens: int = 0) -> None:
        self.metrics.on_step(generated, prompt_tokens, self.queue_depth(), len(self.scheduler.running),
                             self.scheduler.slots.used)

    def _take_inbox(self) -> None:
        with self._lock:
            while self._inbox:
                self.scheduler.add(self._inbox.popleft())
            aborts, self._aborts = self._aborts, set()
        for rid in aborts:
            seq = self._live.get(rid)
            if seq is not None and seq.finish_reason is None:
                self._finish(seq, "abort")

    def _append(self, seq: Sequence, token: int) -> None:
        now = time.monotonic()
        seq.output.append(token)
        if seq.first_token_time is None:
            seq.first_token_time = now
            self.metrics.on_first_token(now - seq.arrival)
        params, state = seq.params, seq.state
        eos = (token in self.eos_ids and not params.ignore_eos) or token in params.stop_token_ids
        text = state.stream.push(state.detok.add(token)) if not eos else ""
        reason = None
        if eos or state.stream.stopped:
            reason = "stop"
        elif len(seq.output) >= params.max_tokens or seq.length >= self.max_model_len:
            reason = "length"
        if reason is None:
            state.on_output(self._output(seq, [token], text, None))
        else:
            self._finish(seq, reason, [token], text)

    def _finish(self, seq: Sequence, reason: str, tokens: list[int] | None = None, text: str = "") -> None:
        seq.finish_reason = reason
        state = seq.state
        if reason in ("stop", "length") and not state.stream.stopped:
            text += state.stream.push(state.detok.flush()) + state.stream.finish()
        move = self.scheduler.release(seq)
        if move is not None:
            self.cache.move(*move)
        with self._lock:
            self._live.pop(seq.request_id, None)
            self._lock.notify_all()
        latency = time.monotonic() - seq.arrival
        ttft = None if seq.first_token_time is None else seq.first_token_time - seq.arrival
        self.metrics.on_finish(reason, latency, len(seq.output), ttft)
        state.on_output(self._output(seq, tokens or [], text, reason))

    @staticmethod
    def _output(seq: Sequence, tokens: list[int], text: str, reason: str | None) -> RequestOutput:
        return RequestOutput(seq.request_id, tokens, text, reason, len(seq.prompt), len(seq.output))

    # ---- running it ----
    def generate(self, prompts: list[str] | list[list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[Completion]:
        """Run a set of prompts concurrently to completion; results in the order of `prompts`."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        results: dict[str, list[RequestOutput]] = {}
        ids = []
        for prompt, p in zip(prompts, params_list, strict=True):
            ids_ = self.encode(prompt) if isinstance(prompt, str) else prompt
            rid = self.add_request(ids_, p, lambda out: results.setdefault(out.request_id, []).append(out))
            ids.append(rid)
        while any(not (results.get(r) and results[r][-1].finished) for r in ids):
            if self._thread is None:
                self.step()
            else:
                with self._lock:
                    self._lock.wait(0.05)
        return [_completion(results[r]) for r in ids]

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def start(self) -> None:
        """Run the loop in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lmopt-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._stop or self._inbox or self._aborts or self.scheduler.has_work()):
                    self._lock.wait()
                if self._stop and not self.scheduler.has_work() and not self._inbox:
                    return
            self.step()

    def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, let in-flight ones finish (up to the timeout), abort the rest, stop."""
        deadline = time.monotonic() + drain_timeout_s
        with self._lock:
            self._accepting = False
            while self._live and self._thread is not None and time.monotonic() < deadline:
                self._lock.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._aborts.update(self._live)
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def _completion(outputs: list[RequestOutput]) -> Completion:
    last = outputs[-1]
    return Completion("".join(o.text for o in outputs), [t for o in outputs for t in o.token_ids],
                      last.finish_reason or "abort", last.prompt_tokens)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids
