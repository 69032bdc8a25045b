"""The OpenAI-compatible FastAPI app: /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics.

    app = create_app(AsyncEngine(Engine(load_model(ref))), ServerConfig(), model_name="smollm2")

Invalid requests get a 400 with an OpenAI-style error body, a missing or wrong API key a 401,
a full queue a 429, a draining server a 503. A client that disconnects (streaming or not) aborts
its request, which frees the KV slot. Shutting the app down drains in-flight requests.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from lmopt.serve.async_engine import AsyncEngine, RequestStream
from lmopt.serve.config import ServerConfig
from lmopt.serve.engine import EngineClosed, QueueFull, RequestOutput, RequestRejected
from lmopt.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_body,
    chat_chunk,
    completion_body,
    new_id,
    usage,
)

OPENAI_COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # what OpenAI's /v1/completions uses when max_tokens is unset


def create_app(engine: AsyncEngine, config: ServerConfig | None = None, model_name: str = "model") -> FastAPI:
    """Build the app around a started AsyncEngine."""
    config = config or ServerConfig()
    name = config.model_name or model_name
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state["draining"] = True
        await engine.shutdown(config.drain_timeout_s)

    app = FastAPI(title="lmopt", lifespan=lifespan)
    app.state.engine = engine.engine
    _install_error_handlers(app)
    auth = _auth_dependency(config.api_key)
    front = _Front(engine, config, name)

    @app.get("/health")
    async def health() -> Response:
        if state["draining"]:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok", "running": len(engine.engine.scheduler.running),
                             "waiting": engine.engine.queue_depth()})

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(engine.engine.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models() -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "lmopt",
                "max_model_len": engine.engine.max_model_len}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(req: CompletionRequest, request: Request) -> Response:
        return await front.completions(req, request)

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(req: ChatCompletionRequest, request: Request) -> Response:
        return await front.chat(req, request)

    return app


class _Front:
    """Turns requests into token ids and sampling params, and engine outputs into responses."""

    def __init__(self, engine: AsyncEngine, config: ServerConfig, name: str) -> None:
        self.engine, self.config, self.name = engine, config, name
        self.tokenizer = engine.tokenizer
        limit = engine.engine.max_model_len
        self.max_prompt = min(config.max_prompt_tokens or limit - 1, limit - 1)

    async def completions(self, req: CompletionRequest, request: Request) -> Response:
        self._check_model(req.model)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        ids = self.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
        stream = self._submit(req, ids, req.max_tokens, OPENAI_COMPLETIONS_DEFAULT_MAX_TOKENS, "prompt")
        rid = new_id("cmpl")
        if req.stream:
            def chunk(out: RequestOutput) -> dict[str, Any]:
                return completion_body(rid, self.name, out.text, out.finish_reason, None, chunk=True)

            def final(use: dict[str, int]) -> dict[str, Any]:
                return {"id": rid, "object": "text_completion", "created": int(time.time()),
                        "model": self.name, "choices": [], "usage": use}

            return _sse(stream, chunk, final if _include_usage(req) else None)
        outs = await _collect(stream, request)
        text, last = "".join(o.text for o in outs), outs[-1]
        use = usage(last.prompt_tokens, last.completion_tokens)
        return JSONResponse(completion_body(rid, self.name, text, last.finish_reason, use))

    async def chat(self, req: ChatCompletionRequest, request: Request) -> Response:
        self._check_model(req.model)
        ids = self._chat_ids(req)
        stream = self._submit(req, ids, req.max_completion_tokens or req.max_tokens,
                              self.config.default_max_tokens, "messages")
        rid = new_id("chatcmpl")
        if req.stream:
            first = [True]

            def chunk(out: RequestOutput) -> dict[str, Any]:
                delta = {"role": "assistant", "content": out.text} if first[0] else {"content": out.text}
                first[0] = False
                delta = delta if out.text or "role" in delta else {}
                return chat_chunk(rid, self.name, delta, out.finish_reason)

            def final(use: dict[str, int]) -> dict[str, Any]:
                return chat_chunk(rid, self.name, None, None, use)

            return _sse(stream, chunk, final if _include_usage(req) else None)
        outs = await _collect(stream, request)
        last = outs[-1]
        use = usage(last.prompt_tokens, last.completion_tokens)
        return JSONResponse(chat_body(rid, self.name, "".join(o.text for o in outs), last.finish_reason, use))

    def _check_model(self, model: str | None) -> None:
        if model not in (None, self.name):
            raise APIError(404, f"The model '{model}' does not exist (this server serves '{self.name}')",
                           param="model", code="model_not_found")

    def _chat_ids(self, req: ChatCompletionRequest) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "this model has no chat template; use /v1/completions", param="messages")
        messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in req.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # template errors (unknown role, bad order) are the request's fault
            raise APIError(400, f"chat template failed: {exc}", param="messages") from None
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _submit(self, req: Any, ids: list[int], requested: int | None, default: int,
                field: str) -> RequestStream:
        if len(ids) > self.max_prompt:
            raise APIError(400, f"the prompt has {len(ids)} tokens, more than the limit of {self.max_prompt}",
                           param=field, code="context_length_exceeded")
        if requested is not None and requested > self.config.max_tokens:
            raise APIError(400, f"max_tokens ({requested}) exceeds this server's limit of "
                           f"{self.config.max_tokens}", param="max_tokens")
        room = self.engine.engine.max_model_len - len(ids)
        max_tokens = requested or max(1, min(default, self.config.max_tokens, room))
        try:
            return self.engine.submit(ids, req.sampling(max_tokens))
        except (RequestRejected, ValueError) as exc:
            raise APIError(400, str(exc), param="max_tokens" if "max_tokens" in str(exc) else None) from None
        except QueueFull as exc:
            raise APIError(429, str(exc), kind="rate_limit_error", code="queue_full") from None
        except EngineClosed as exc:
            raise APIError(503, str(exc), kind="service_unavailable", code="draining") from None


def _include_usage(req: Any) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


def _sse(stream: RequestStream, chunk: Callable[[RequestOutput], dict[str, Any]],
         final: Callable[[dict[str, int]], dict[str, Any]] | None) -> StreamingResponse:
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
        finally:  # the client went away (the response task was cancelled) or the request ended
            stream.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _collect(stream: RequestStream, request: Request) -> list[RequestOutput]:
    """All outputs of a non-streaming request; aborts it if the client disconnects meanwhile."""

    async def drain() -> list[RequestOutput]:
        return [out async for out in stream]

    task = asyncio.ensure_future(drain())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.2)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                raise APIError(499, "client disconnected", code="client_closed_request")
        outs = task.result()
    finally:
        stream.cancel()
    if outs[-1].finish_reason in ("error", "abort"):
        raise APIError(500, f"generation failed ({outs[-1].finish_reason})", kind="server_error")
    return outs


def _auth_dependency(api_key: str | None) -> Callable[[Request], None]:
    def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "Incorrect or missing API key", code="invalid_api_key")

    return check


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        param = ".".join(loc) or None
        return JSONResponse(APIError(400, f"{param}: {msg}" if param else msg, param=param).body(),
                            status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)
