"""The OpenAI-compatible FastAPI app: /v1/completions, /v1/chat/completions, /v1/models, /v1/feedback,
/health, /metrics.

    app = create_app(AsyncEngine(Engine(load_model(ref))), ServerConfig(), model_name="smollm2",
                     telemetry=Telemetry(store, sample_rate=0.1))

Invalid requests get a 400 with an OpenAI-style error body, a missing or wrong API key a 401,
a full queue a 429, a draining server a 503. A client that disconnects (streaming or not) aborts
its request, which frees the KV slot at the engine's next iteration. With a traffic sink, sampled
requests are recorded when their response ends (see telemetry.py) and `/v1/feedback` stores ratings.
Shutting the app down drains in-flight requests, then closes the sink.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from lmopt.serve.async_engine import AsyncEngine, RequestStream
from lmopt.serve.config import ServerConfig
from lmopt.serve.engine import EngineClosed, QueueFull, RequestOutput, RequestRejected
from lmopt.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    chat_body,
    chat_chunk,
    completion_body,
    new_id,
    usage,
)
from lmopt.serve.responses import collect, sse_response
from lmopt.serve.telemetry import FeedbackRecord, Telemetry, TrafficRecord, chat_prompt_text

log = logging.getLogger("lmopt.serve")

OPENAI_COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # what OpenAI's /v1/completions uses when max_tokens is unset


def create_app(engine: AsyncEngine, config: ServerConfig | None = None, model_name: str = "model",
               telemetry: Telemetry | None = None) -> FastAPI:
    """Build the app around a started AsyncEngine; `telemetry` records traffic (default: nothing).

    `app.state.telemetry.metrics.set_drift(metric, value)` publishes a drift figure on /metrics.
    """
    config = config or ServerConfig()
    name = config.model_name or model_name
    telemetry = telemetry or Telemetry()
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state["draining"] = True
        await engine.shutdown(config.drain_timeout_s)
        await asyncio.to_thread(telemetry.close)  # writes what is still queued

    app = FastAPI(title="lmopt", lifespan=lifespan)
    app.state.engine, app.state.telemetry = engine.engine, telemetry
    _install_error_handlers(app)
    auth = _auth_dependency(config.api_key)
    front = _Front(engine, config, name, telemetry)

    @app.get("/health")
    async def health() -> Response:
        if state["draining"]:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok", "running": len(engine.engine.scheduler.running),
                             "waiting": engine.engine.queue_depth()})

    @app.get("/metrics")
    async def metrics() -> Response:
        text = engine.engine.metrics.render() + telemetry.render()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

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

    @app.post("/v1/feedback", dependencies=[Depends(auth)])
    async def feedback(req: FeedbackRequest) -> dict[str, Any]:
        return await _feedback(telemetry, req)

    return app


async def _feedback(telemetry: Telemetry, req: FeedbackRequest) -> dict[str, Any]:
    if not telemetry.enabled:
        raise APIError(501, "this server records no feedback: it was started without a traffic store",
                       code="feedback_disabled")
    record = FeedbackRecord(req.response_id, req.rating, req.correction, req.comment, time.time())
    try:
        known = await telemetry.feedback(record)
    except Exception as exc:  # the database is down or locked: say so, the client may retry
        log.exception("storing feedback failed")
        raise APIError(503, f"the feedback could not be stored ({type(exc).__name__}); retry later",
                       kind="service_unavailable", code="store_unavailable") from None
    if not known:
        raise APIError(404, f"no response with id '{req.response_id}' is known to this server; give the "
                       f"`id` a completion returned", param="response_id", code="response_not_found")
    return {"object": "feedback", "response_id": req.response_id, "rating": req.rating, "stored": True}


class _Front:
    """Turns requests into token ids and sampling params, and engine outputs into responses."""

    def __init__(self, engine: AsyncEngine, config: ServerConfig, name: str, telemetry: Telemetry) -> None:
        self.engine, self.config, self.name, self.telemetry = engine, config, name, telemetry
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
        on_end = self._recorder(rid, "completions", stream, bool(req.stream),
                                lambda: prompt if isinstance(prompt, str) else self.tokenizer.decode(ids), None)
        if req.stream:
            def chunk(out: RequestOutput) -> dict[str, Any]:
                return completion_body(rid, self.name, out.text, out.finish_reason, None, chunk=True)

            def final(use: dict[str, int]) -> dict[str, Any]:
                return {"id": rid, "object": "text_completion", "created": int(time.time()),
                        "model": self.name, "choices": [], "usage": use}

            return sse_response(stream, chunk, final if _include_usage(req) else None, on_end)
        outs = await collect(stream, request, on_end)
        text, last = "".join(o.text for o in outs), outs[-1]
        use = usage(last.prompt_tokens, last.completion_tokens)
        return JSONResponse(completion_body(rid, self.name, text, last.finish_reason, use))

    async def chat(self, req: ChatCompletionRequest, request: Request) -> Response:
        self._check_model(req.model)
        messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in req.messages]
        ids = self._chat_ids(messages)
        stream = self._submit(req, ids, req.max_completion_tokens or req.max_tokens,
                              self.config.default_max_tokens, "messages")
        rid = new_id("chatcmpl")
        kept = [{"role": m["role"], "content": m["content"]} for m in messages]
        on_end = self._recorder(rid, "chat.completions", stream, bool(req.stream),
                                lambda: chat_prompt_text(kept), kept)
        if req.stream:
            first = [True]

            def chunk(out: RequestOutput) -> dict[str, Any]:
                delta = {"role": "assistant", "content": out.text} if first[0] else {"content": out.text}
                first[0] = False
                delta = delta if out.text or "role" in delta else {}
                return chat_chunk(rid, self.name, delta, out.finish_reason)

            def final(use: dict[str, int]) -> dict[str, Any]:
                return chat_chunk(rid, self.name, None, None, use)

            return sse_response(stream, chunk, final if _include_usage(req) else None, on_end)
        outs = await collect(stream, request, on_end)
        last = outs[-1]
        use = usage(last.prompt_tokens, last.completion_tokens)
        return JSONResponse(chat_body(rid, self.name, "".join(o.text for o in outs), last.finish_reason, use))

    def _recorder(self, rid: str, endpoint: str, stream: RequestStream, streamed: bool,
                  prompt: Callable[[], str], messages: list[dict[str, str]] | None) -> Callable[[], None]:
        """What to run when the response ends: hand a record to the sink if this request is sampled."""
        self.telemetry.issued(rid)
        if not self.telemetry.sampled():
            return _nothing
        stream.keep_text = True
        created = time.time()

        def on_end() -> None:
            try:
                end = time.monotonic()
                ttft = None if stream.first_token_time is None else stream.first_token_time - stream.arrival
                self.telemetry.record(TrafficRecord(
                    rid, endpoint, self.name, self.telemetry.model_hash, prompt(), messages,
                    "".join(stream.text_parts), stream.prompt_tokens, stream.completion_tokens,
                    stream.finish_reason or "abort", streamed, ttft, end - stream.arrival, created))
            except Exception:  # recording must never fail a response
                log.exception("recording request %s failed", rid)

        return on_end

    def _check_model(self, model: str | None) -> None:
        if model not in (None, self.name):
            raise APIError(404, f"The model '{model}' does not exist (this server serves '{self.name}')",
                           param="model", code="model_not_found")

    def _chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "this model has no chat template; use /v1/completions", param="messages")
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


def _nothing() -> None:
    pass


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
        if err.get("type") == "json_invalid":  # loc is ("body", character offset): not a parameter
            reason = (err.get("ctx") or {}).get("error", "JSON decode error")
            where = err["loc"][-1] if len(err.get("loc", ())) > 1 else "?"
            body = APIError(400, f"the request body is not valid JSON ({reason} at character {where})").body()
            return JSONResponse(body, status_code=400)
        if tuple(err.get("loc", ())) == ("body",) and err.get("type") == "missing":
            return JSONResponse(APIError(400, "the request body is empty; send a JSON object").body(),
                                status_code=400)
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        param = ".".join(loc) or None
        return JSONResponse(APIError(400, f"{param}: {msg}" if param else msg, param=param).body(),
                            status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)
