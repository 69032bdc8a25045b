"""The engine seen from asyncio: `async for out in engine.submit(ids, params)`.

The engine loop runs in its own thread (torch releases the GIL inside its kernels, so the event loop
keeps answering while a batch computes). Outputs cross into the event loop with
`call_soon_threadsafe`. Leaving the `async for` early (client disconnected, task cancelled) aborts the
request, which frees its KV slot at the next iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        return RequestStream(self.engine, rid, queue)

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
    """Async iterator over one request's outputs; `cancel()` aborts it unless it already finished."""

    def __init__(self, engine: Engine, request_id: str, queue: asyncio.Queue[RequestOutput]) -> None:
        self.engine, self.request_id, self.queue = engine, request_id, queue
        self.finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        out = await self.queue.get()
        self.finished = out.finished
        return out

    def cancel(self) -> None:
        if not self.finished:
            self.finished = True
            self.engine.abort(self.request_id)
