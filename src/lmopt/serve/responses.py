"""Turning a request's engine outputs into an HTTP response: server-sent events or one JSON body.

Both abort the request when the response ends early (client gone), and then call `on_end` (the
traffic recorder), whichever way the response ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from lmopt.serve.async_engine import RequestStream
from lmopt.serve.engine import RequestOutput
from lmopt.serve.protocol import APIError, usage


def sse_response(stream: RequestStream, chunk: Callable[[RequestOutput], dict[str, Any]],
                 final: Callable[[dict[str, int]], dict[str, Any]] | None, on_end: Callable[[], None]) -> Response:
    """Server-sent events: one `data:` line per engine output, then `data: [DONE]`."""

    async def events() -> AsyncIterator[str]:
        try:
            async for out in stream:
                if out.finish_reason in ("error", "abort"):
                    error = APIError(500, f"generation failed ({out.finish_reason})", kind="server_error")
                    body = error.body()
                    yield f"data: {json.dumps(body)}\n\n"
                    return
                if out.text or out.finished:
                    yield f"data: {json.dumps(chunk(out))}\n\n"
                if out.finished and final is not None:
                    yield f"data: {json.dumps(final(usage(out.prompt_tokens, out.completion_tokens)))}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the request ended, or the client went away while we waited for the engine
            stream.cancel()

    return EventStream(events(), stream, on_end)


class EventStream(StreamingResponse):
    """An SSE response that aborts (and records) its request however the response ends.

    When the client hangs up, Starlette cancels the task sending the body. If that cancellation lands
    in a `send` waiting on the client's socket (not in the body generator's wait for the engine), the
    generator stays suspended at a `yield`, and an abort placed in its `finally` runs only when the
    garbage collector finalizes it; until then the request keeps its slot and decodes for nobody.
    """

    def __init__(self, events: AsyncIterator[str], stream: RequestStream, on_end: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.stream, self.on_end, self.events = stream, on_end, events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.stream.cancel()  # no-op when it finished; else the slot is freed at the next iteration
            self.on_end()
            await self.events.aclose()  # type: ignore[attr-defined]  # an async generator


async def collect(stream: RequestStream, request: Request, on_end: Callable[[], None]) -> list[RequestOutput]:
    """All outputs of a non-streaming request; aborts it if the client disconnects meanwhile."""

    async def drain() -> list[RequestOutput]:
        return [out async for out in stream]

    task = asyncio.ensure_future(drain())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.2)
            if not task.done() and await request.is_disconnected():
                raise APIError(499, "client disconnected", code="client_closed_request")
        outs = task.result()
    finally:
        task.cancel()
        stream.cancel()
        on_end()
    if outs[-1].finish_reason in ("error", "abort"):
        raise APIError(500, f"generation failed ({outs[-1].finish_reason})", kind="server_error")
    return outs
