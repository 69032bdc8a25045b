"""The engine seen from asyncio: `async for out in engine.submit(ids, params)`.

The engine loop runs in its own thread (torch releases the GIL inside its kernels, so the event loop
keeps answering while a batch computes). Outputs cross into the event loop with
`call_soon_threadsafe`. Leaving the `async for` early (client disconnected, task cancelled) aborts the
request, which frees its KV slot at the next iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from lmopt.serve.engine import Engine, RequestOutput
from lmopt.serve.sampling import SamplingParams


class AsyncEngine:
    """Starts the engine thread; `stream()` yields each request's outputs as they come."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        engine.start()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def submit(self, prompt: list[int], params: SamplingParams,
               request_id: str | None = None) -> RequestStream:
        """Queue a request now (raising RequestRejected, QueueFull or EngineClosed at once)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()

        def deliver(out: RequestOutput) -> None:  # runs on the engine thread
            # RuntimeError: the event loop is gone (server stopped), nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, out)

        rid = self.engine.add_request(prompt, params, deliver, request_id)
        return RequestStream(self.engine, rid, queue, len(prompt))

    async def generate(self, prompt: list[int], params: SamplingParams) -> list[RequestOutput]:
        """All outputs of one request (non-streaming); cancelling the caller aborts the request."""
        stream = self.submit(prompt, params)
        try:
            return [out async for out in stream]
        finally:
            stream.cancel()

    async def shutdown(self, drain_timeout_s: float) -> None:
        await asyncio.to_thread(self.engine.shutdown, drain_timeout_s)


class RequestStream:
    """Async iterator over one request's outputs; `cancel()` aborts it unless it already finished.

    It also keeps what a traffic record needs (token counts, timings, the finish reason and, when
    `keep_text` is set, the text), whoever consumes it and however it ends.
    """

    def __init__(self, engine: Engine, request_id: str, queue: asyncio.Queue[RequestOutput],
                 prompt_tokens: int = 0) -> None:
        self.engine, self.request_id, self.queue = engine, request_id, queue
        self.finished = False
        self.arrival = time.monotonic()
        self.first_token_time: float | None = None
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0
        self.finish_reason: str | None = None
        self.keep_text = False
        self.text_parts: list[str] = []

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        out = await self.queue.get()
        self.finished = out.finished
        self._note(out)
        return out

    def _note(self, out: RequestOutput) -> None:
        if out.token_ids and self.first_token_time is None:
            self.first_token_time = time.monotonic()
        self.completion_tokens = out.completion_tokens
        self.finish_reason = out.finish_reason
        if self.keep_text and out.text:
            self.text_parts.append(out.text)

    def cancel(self) -> None:
        if not self.finished:
            self.finished = True
            self.finish_reason = self.finish_reason or "abort"
            self.engine.abort(self.request_id)
