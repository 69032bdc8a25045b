"""The live server on 127.0.0.1 (ephemeral port), driven by the official `openai` client."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import torch

from lmopt.serve.api import create_app
from lmopt.serve.async_engine import AsyncEngine
from lmopt.serve.config import EngineConfig, ServerConfig
from lmopt.serve.engine import Engine
from lmopt.serve.server import BackgroundServer

KEY = "test-key"


def _server(tiny, engine_config: EngineConfig, **server_fields) -> BackgroundServer:
    engine = AsyncEngine(Engine(tiny, engine_config))
    config = ServerConfig(port=0, api_key=KEY, **{"max_tokens": 64, **server_fields})
    return BackgroundServer(create_app(engine, config, model_name="tiny"), config)


@pytest.fixture(scope="module")
def server(tiny):
    with _server(tiny, EngineConfig(max_batch=4, max_model_len=256, kv_cache_mb=8, threads=1)) as srv:
        yield srv


@pytest.fixture()
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def _reference_text(tiny, prompt: str, n: int) -> str:
    ids = tiny.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = tiny.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, pad_token_id=0)
    return tiny.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_completions_plain_and_streamed_equal_generate(tiny, client) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]
    prompt = "The standard library"
    res = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert res.choices[0].text == _reference_text(tiny, prompt, 12)
    assert res.choices[0].finish_reason == "length" and res.usage.completion_tokens == 12
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == res.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_completions_apply_the_chat_template_and_stream(tiny, client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    res = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    text = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert res.usage.prompt_tokens == len(tiny.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert res.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == res.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == res.usage.completion_tokens


def test_concurrent_requests_get_the_same_answers_as_sequential_ones(client) -> None:
    prompts = ["import os", "class Foo:", "for i in range(10):", "The quick brown", "Lists are", "def f("]

    def call(i: int) -> str:
        res = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=8 + i, temperature=0)
        results[i] = res.choices[0].text
        return results[i]

    results: dict[int, str] = {}
    sequential = [call(i) for i in range(len(prompts))]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(prompts))] == sequential


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "temperature": 5}, "temperature"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "bogus": 1}, "bogus"),
    ({"prompt": "x", "max_tokens": 65}, "max_tokens"),
    ({"prompt": "word " * 300}, "prompt"),
    ({"prompt": []}, "prompt"),
])
def test_invalid_requests_get_400_with_an_openai_error_body(server, body, param) -> None:
    res = httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert res.status_code == 400
    error = res.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_api_key_model_name_health_and_metrics(server, client) -> None:
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=2)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    client.completions.create(model="tiny", prompt="x", max_tokens=2)
    parser = pytest.importorskip("prometheus_client.parser")
    text = httpx.get(server.url + "/metrics").text
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert {"lmopt_queue_depth", "lmopt_running_requests", "lmopt_generation_tokens_per_second",
            "lmopt_time_to_first_token_seconds", "lmopt_request_latency_seconds"} <= set(families)
    samples = families["lmopt_request_latency_seconds"].samples
    assert next(s.value for s in samples if s.name.endswith("_count")) >= 1


def test_disconnect_frees_the_slot_and_overload_gets_429(tiny) -> None:
    config = EngineConfig(max_batch=1, max_queue=0, max_model_len=512, kv_cache_mb=8, threads=1)
    with _server(tiny, config, max_prompt_tokens=8, max_tokens=500) as srv:
        engine = srv.server.config.app.state.engine
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)
        stream = client.completions.create(model="tiny", prompt="x", max_tokens=64, stream=True,
                                           extra_body={"ignore_eos": True})
        next(iter(stream))  # the only slot is now busy
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="tiny", prompt="y", max_tokens=4)
        stream.close()  # the client goes away mid-stream
        _wait(lambda: engine.num_unfinished() == 0 and engine.scheduler.slots.used == 0)
        assert engine.metrics.finished.get("abort") == 1
        assert client.completions.create(model="tiny", prompt="y", max_tokens=4).usage.completion_tokens >= 1
        # a non-streaming client that gives up (timeout) is noticed too; each step is slowed down so
        # the request is still running when the client leaves (the tiny model decodes 500 tokens in 0.3 s)
        forward = engine.runner.forward
        engine.runner.forward = lambda *args: (time.sleep(0.005), forward(*args))[1]
        with pytest.raises(httpx.TimeoutException):
            httpx.post(srv.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=0.3,
                       json={"prompt": "z", "max_tokens": 500, "ignore_eos": True})
        _wait(lambda: engine.metrics.finished.get("abort") == 2)
        assert engine.scheduler.slots.used == 0


def test_shutdown_drains_in_flight_requests(tiny) -> None:
    config = EngineConfig(max_batch=2, max_model_len=512, kv_cache_mb=8, threads=1)
    srv = _server(tiny, config, max_tokens=500).__enter__()
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)
    engine = srv.server.config.app.state.engine
    stream = client.completions.create(model="tiny", prompt="x", max_tokens=400, stream=True,
                                       extra_body={"ignore_eos": True},
                                       stream_options={"include_usage": True})
    it = iter(stream)
    next(it)
    stopper = threading.Thread(target=srv.stop)
    stopper.start()  # graceful shutdown while the request is streaming
    _wait(lambda: srv.server.should_exit)
    assert engine.num_unfinished() == 1  # still generating when the shutdown began
    rest = list(it)
    stopper.join()
    assert rest[-2].choices[0].finish_reason == "length" and rest[-1].usage.completion_tokens == 400
    with pytest.raises(httpx.HTTPError):
        httpx.get(srv.url + "/health", timeout=2)
    srv.sock.close()


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
