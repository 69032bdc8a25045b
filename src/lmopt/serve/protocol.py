"""The OpenAI wire format: request models (validated, unknown fields refused), response builders.

Extensions beyond OpenAI's fields, as vLLM names them: `top_k`, `ignore_eos`.
`POST /v1/feedback` (`FeedbackRequest`) is lmopt's own: a rating of a response by its id.
Accepted but only at their neutral value (anything else is a 400): `n` = 1, penalties = 0, no
`logprobs`, no `echo`, no `suffix`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from lmopt.serve.sampling import SamplingParams


class APIError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=-1)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    logit_bias: dict[str, float] | None = Field(default=None, max_length=0)
    user: str | None = None
    ignore_eos: bool = False

    def sampling(self, max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, seed=self.seed, stop=stop, ignore_eos=self.ignore_eos)


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] = Field(min_length=1)
    echo: Literal[False] = False
    logprobs: None = None
    suffix: None = None
    best_of: Literal[1] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool fields... passed to the chat template
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text; content parts of type "text" are joined (no images here)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise APIError(400, f"content part of type '{part.get('type')}' is not supported",
                               param="messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: Literal[False] | None = None


class FeedbackRequest(BaseModel):
    """`POST /v1/feedback`: what a user said about one response."""

    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(min_length=1, max_length=128)
    """The `id` of the completion being rated."""
    rating: float = Field(ge=-1, le=1)
    """-1 (bad) .. 1 (good); thumbs down/up are -1/1."""
    correction: str | None = Field(default=None, max_length=100_000,
                                   validation_alias=AliasChoices("correction", "corrected_answer"))
    """The answer the user would have wanted (also accepted as `corrected_answer`)."""
    comment: str | None = Field(default=None, max_length=10_000)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, text: str, finish: str | None, use: dict[str, int] | None,
                    chunk: bool = False) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    body: dict[str, Any] = {"id": rid, "object": "text_completion", "created": int(time.time()),
                            "model": model, "choices": [choice]}
    if use is not None or not chunk:
        body["usage"] = use
    return body


def chat_body(rid: str, model: str, text: str, finish: str | None,
              use: dict[str, int] | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish}],
            "usage": use}


def chat_chunk(rid: str, model: str, delta: dict[str, Any] | None, finish: str | None,
               use: dict[str, int] | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    choices = [] if delta is None else [choice]
    body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body
