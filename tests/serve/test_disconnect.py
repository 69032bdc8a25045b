"""Clients that hang up mid-stream: their slots are freed at the engine's next iteration and /metrics says so.

Issue 14: 24 streaming chat requests whose clients left after 3 lines kept `lmopt_running_requests` at
7, because the gauges were only updated by iterations that ran a batch, and the aborts emptied it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from lmopt.serve.api import create_app
from lmopt.serve.async_engine import AsyncEngine
from lmopt.serve.config import EngineConfig, ServerConfig
from lmopt.serve.engine import Engine
from lmopt.serve.server import BackgroundServer

CHAT = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 400,
        "stream": True, "ignore_eos": True}


def _gauges(url: str) -> dict[str, float]:
    parser = pytest.importorskip("prometheus_client.parser")
    families = parser.text_string_to_metric_families(httpx.get(url + "/metrics").text)
    return {f.name: f.samples[0].value for f in families if f.type == "gauge" and f.samples}


def _read_three_lines_and_hang_up(url: str) -> None:
    with httpx.stream("POST", url + "/v1/chat/completions", json=CHAT, timeout=60) as res:
        lines = 0
        for line in res.iter_lines():
            lines += line.startswith("data:")
            if lines == 3:
                return


def _track_aborts_and_finishes(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """Engine iteration at which each request's abort was asked for, and at which it left the batch."""
    asked, left = {}, {}
    abort, finish = engine.abort, engine._finish

    def abort_spy(request_id: str) -> None:
        asked.setdefault(request_id, engine.iterations)
        abort(request_id)

    def finish_spy(seq, reason, *args, **kwargs) -> None:
        left[seq.request_id] = (reason, engine.iterations)
        finish(seq, reason, *args, **kwargs)

    monkeypatch.setattr(engine, "abort", abort_spy)
    monkeypatch.setattr(engine, "_finish", finish_spy)
    return asked, left


def test_clients_hanging_up_mid_stream_free_their_slots_and_the_gauges(tiny, monkeypatch) -> None:
    engine = Engine(tiny, EngineConfig(max_batch=8, max_model_len=512, kv_cache_mb=8, threads=1))
    config = ServerConfig(port=0, max_tokens=400)
    asked, left = _track_aborts_and_finishes(engine, monkeypatch)
    with BackgroundServer(create_app(AsyncEngine(engine), config, model_name="tiny"), config) as srv:
        clients = [threading.Thread(target=_read_three_lines_and_hang_up, args=(srv.url,)) for _ in range(24)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(60)
        deadline = time.monotonic() + 30  # a guard against hanging, not a measurement
        while len(asked) < 24 and time.monotonic() < deadline:
            time.sleep(0.01)
        last_abort = time.monotonic()
        assert len(asked) == 24, "the server did not notice every hang-up"
        while _gauges(srv.url)["lmopt_running_requests"] != 0 and time.monotonic() < last_abort + 1.0:
            time.sleep(0.02)
        gauges = _gauges(srv.url)
        assert gauges["lmopt_running_requests"] == 0 and gauges["lmopt_kv_slots_used"] == 0
        assert gauges["lmopt_queue_depth"] == 0
        assert len(engine.scheduler.running) == 0 and engine.num_unfinished() == 0
    assert engine.metrics.finished == {"abort": 24}
    # each request left the batch at the iteration after its abort was asked for, at the latest
    assert all(left[rid] == ("abort", left[rid][1]) and left[rid][1] <= it + 1 for rid, it in asked.items())


def test_a_client_that_stops_reading_then_hangs_up_is_aborted_when_its_response_ends(tiny, monkeypatch) -> None:
    """The hang-up cancels a `send` blocked on the client's socket, not the wait for the engine."""
    engine = Engine(tiny, EngineConfig(max_batch=2, max_model_len=512, kv_cache_mb=8, threads=1))
    asked, _ = _track_aborts_and_finishes(engine, monkeypatch)
    app = create_app(AsyncEngine(engine), ServerConfig(max_tokens=400), model_name="tiny")
    body = json.dumps(CHAT).encode()

    async def one_request() -> int:
        hung_up, chunks, requested = asyncio.Event(), [], [False]

        async def receive() -> dict:
            if not requested[0]:
                requested[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await hung_up.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])
                if len(chunks) == 3:
                    hung_up.set()
                    await asyncio.Event().wait()  # the socket buffer is full: this send never returns

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
        await app(scope, receive, send)
        return len(asked)  # read before the event loop runs anything else (a finalizer, for one)

    assert asyncio.run(one_request()) == 1
    deadline = time.monotonic() + 30
    while engine.num_unfinished() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.metrics.finished == {"abort": 1} and engine.scheduler.slots.used == 0
    engine.shutdown(0)
