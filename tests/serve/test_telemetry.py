"""Traffic recording and feedback through the live server (tiny model, a traffic store in a temp dir)."""

from __future__ import annotations

import random
import threading

import httpx
import openai
import pytest

import lmopt.monitor.traffic as traffic_module
from lmopt.monitor.traffic import TrafficStore
from lmopt.serve.api import create_app
from lmopt.serve.async_engine import AsyncEngine
from lmopt.serve.config import EngineConfig, ServerConfig
from lmopt.serve.engine import Engine
from lmopt.serve.server import BackgroundServer
from lmopt.serve.telemetry import Telemetry

PII = "My address is jane.doe@example.com, what is a list?"


def _server(tiny, telemetry: Telemetry) -> BackgroundServer:
    engine = AsyncEngine(Engine(tiny, EngineConfig(max_batch=4, max_model_len=256, kv_cache_mb=8, threads=1)))
    config = ServerConfig(port=0, max_tokens=200)
    return BackgroundServer(create_app(engine, config, model_name="tiny", telemetry=telemetry), config)


def _client(srv: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


def _metrics(srv: BackgroundServer) -> dict[tuple[str, tuple], float]:
    parser = pytest.importorskip("prometheus_client.parser")
    families = parser.text_string_to_metric_families(httpx.get(srv.url + "/metrics").text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


@pytest.fixture()
def store(tmp_path):
    s = TrafficStore(f"sqlite:///{tmp_path / 'traffic.db'}")
    yield s
    s.close()


def test_sampled_requests_are_recorded_with_their_response_and_pii_scrubbed(tiny, store) -> None:
    with _server(tiny, Telemetry(store, 1.0, model_hash="abc123")) as srv:
        client = _client(srv)
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PII}],
                                              max_tokens=6, temperature=0)
        chunks = list(client.completions.create(model="tiny", prompt="The list", max_tokens=5, temperature=0,
                                                stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        with httpx.stream("POST", srv.url + "/v1/completions", json={
                "prompt": "Long", "max_tokens": 200, "stream": True, "ignore_eos": True}) as res:
            next(res.iter_lines())  # then hang up
    store.close()  # the server closed it on shutdown; this waits for nothing more
    rows = {r["response_id"]: r for r in store.requests()}
    assert len(rows) == 3
    row = rows[chat.id]
    assert row["prompt"] == "My address is <EMAIL>, what is a list?" and row["pii"] == {"email": 2}
    assert row["messages"] == [{"role": "user", "content": row["prompt"]}]
    assert row["response"] == chat.choices[0].message.content and row["endpoint"] == "chat.completions"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (chat.usage.prompt_tokens,
                                                                chat.usage.completion_tokens)
    assert (row["model"], row["model_hash"], row["stream"]) == ("tiny", "abc123", False)
    assert 0 < row["ttft_s"] <= row["latency_s"]
    streamed = rows[chunks[0].id]
    assert streamed["response"] == "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed["stream"] and streamed["finish_reason"] == "length" and streamed["completion_tokens"] == 5
    [hung_up_id] = set(rows) - {chat.id, chunks[0].id}
    assert rows[hung_up_id]["finish_reason"] == "abort" and rows[hung_up_id]["completion_tokens"] < 200


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_the_sampling_rate_is_honoured(tiny, store, rate) -> None:
    with _server(tiny, Telemetry(store, rate, seed=7)) as srv:
        client = _client(srv)
        ids = [client.completions.create(model="tiny", prompt="x", max_tokens=1).id for _ in range(24)]
    reference = random.Random(7)  # the same draws, in request order
    expected = [rid for rid in ids if reference.random() < rate]
    assert [r["response_id"] for r in store.requests()] == expected
    if rate == 0.5:
        assert 0 < len(expected) < 24  # the draws did pick some and skip some


def test_feedback_round_trip_and_errors(tiny, store) -> None:
    with _server(tiny, Telemetry(store, 0.0)) as srv:  # nothing sampled: feedback still works
        rid = _client(srv).completions.create(model="tiny", prompt="x", max_tokens=2).id
        res = httpx.post(srv.url + "/v1/feedback", json={"response_id": rid, "rating": 1,
                                                         "corrected_answer": "Write to a@b.example", "comment": "ok"})
        assert res.status_code == 200 and res.json()["stored"] is True
        assert httpx.post(srv.url + "/v1/feedback", json={"response_id": rid, "rating": -0.5}).status_code == 200
        unknown = httpx.post(srv.url + "/v1/feedback", json={"response_id": "chatcmpl-nope", "rating": 1})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "response_not_found" and "chatcmpl-nope" in unknown.text
        bad_json = httpx.post(srv.url + "/v1/feedback", content=b'{"response_id": ',
                              headers={"content-type": "application/json"})
        assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
        assert "not valid JSON" in bad_json.json()["error"]["message"] and bad_json.json()["error"]["param"] is None
        for body, param in [({"response_id": rid, "rating": 3}, "rating"), ({"rating": 1}, "response_id"),
                            ({"response_id": rid, "rating": 1, "stars": 5}, "stars")]:
            res = httpx.post(srv.url + "/v1/feedback", json=body)
            assert res.status_code == 400 and res.json()["error"]["param"] == param
        metrics = _metrics(srv)
    assert metrics[("lmopt_feedback_total", (("rating", "positive"),))] == 1
    assert metrics[("lmopt_feedback_total", (("rating", "negative"),))] == 1
    assert metrics[("lmopt_feedback_corrections_total", ())] == 1
    rows = store.feedback()
    assert [(r["response_id"], r["rating"]) for r in rows] == [(rid, 1.0), (rid, -0.5)]
    assert rows[0]["correction"] == "Write to <EMAIL>" and store.requests() == []


def test_feedback_without_a_traffic_store_is_refused(tiny) -> None:
    with _server(tiny, Telemetry()) as srv:
        res = httpx.post(srv.url + "/v1/feedback", json={"response_id": "cmpl-1", "rating": 1})
        assert res.status_code == 501 and res.json()["error"]["code"] == "feedback_disabled"
        assert "lmopt_traffic_records_total" not in httpx.get(srv.url + "/metrics").text


def test_recording_is_off_the_request_path(tiny, tmp_path, monkeypatch) -> None:
    """With the store's writer stuck, requests are still answered, the overflow is dropped and counted,
    and the PII scrubbing runs on the writer thread only."""
    store = TrafficStore(f"sqlite:///{tmp_path / 'stuck.db'}", queue_size=1)
    gate, write, scrubbed_on = threading.Event(), store._write, set()
    store._write = lambda records: (gate.wait(), write(records))

    def scrub_spy(text, *args, **kwargs):
        scrubbed_on.add(threading.current_thread().name)
        return scrub(text, *args, **kwargs)

    scrub = traffic_module.scrub_pii
    monkeypatch.setattr(traffic_module, "scrub_pii", scrub_spy)
    with _server(tiny, Telemetry(store, 1.0)) as srv:
        client = _client(srv)
        answers = [client.completions.create(model="tiny", prompt=PII, max_tokens=2) for _ in range(6)]
        metrics = _metrics(srv)
        gate.set()
    assert all(a.choices[0].finish_reason for a in answers)
    recorded = metrics[("lmopt_traffic_records_total", ())]
    dropped = metrics[("lmopt_traffic_records_dropped_total", ())]
    assert recorded + dropped == 6 and dropped == store.dropped >= 4
    assert store.count() == recorded and scrubbed_on == {"lmopt-traffic-writer"}


def test_drift_gauges_appear_once_a_checker_sets_them(tiny) -> None:
    telemetry = Telemetry()
    with _server(tiny, telemetry) as srv:
        assert not any(name.startswith("lmopt_drift") for name, _ in _metrics(srv))
        srv.server.config.app.state.telemetry.metrics.set_drift("prompt_length_js", 0.12, alert=True)
        telemetry.set_drift('output "len"\n', 3)
        metrics = _metrics(srv)
    assert metrics[("lmopt_drift", (("metric", "prompt_length_js"),))] == 0.12
    assert metrics[("lmopt_drift_alert", (("metric", "prompt_length_js"),))] == 1
    assert metrics[("lmopt_drift", (("metric", 'output "len"\n'),))] == 3
