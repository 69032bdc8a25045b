"""The traffic store: records written off the caller's thread, PII scrubbed, drops counted, retention,
feedback; on SQLite and (when a server is available) PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from lmopt.errors import LmoptError
from lmopt.monitor.traffic import TrafficStore
from lmopt.serve.telemetry import FeedbackRecord, TrafficRecord
from postgres_server import pg_server, pg_url  # noqa: F401  (fixtures)

PII_PROMPT = "Mail jane.doe@example.com or call +44 20 7946 0958, my key is sk-abcdefghijklmnopqrstuvwx."


def _record(rid: str, prompt: str = "What is a list?", created: float | None = None,
            messages: list[dict] | None = None) -> TrafficRecord:
    return TrafficRecord(rid, "chat.completions" if messages else "completions", "tiny", "0123456789abcdef",
                         prompt, messages, "A list is a sequence.", 5, 6, "stop", False, 0.01, 0.05,
                         created if created is not None else time.time())


def _feedback(rid: str, rating: float = 1.0, correction: str | None = None,
              created: float | None = None) -> FeedbackRecord:
    return FeedbackRecord(rid, rating, correction, "thanks", created if created is not None else time.time())


@pytest.fixture()
def store(tmp_path):
    s = TrafficStore(f"sqlite:///{tmp_path / 'traffic.db'}")
    yield s
    s.close()


def test_records_are_stored_with_every_field_and_pii_scrubbed(store) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PII_PROMPT}]
    assert store.record(_record("chatcmpl-1", PII_PROMPT, messages=messages))
    assert store.flush()
    [row] = store.requests()
    assert row["response_id"] == "chatcmpl-1" and row["model_hash"] == "0123456789abcdef"
    assert (row["prompt_tokens"], row["completion_tokens"], row["finish_reason"]) == (5, 6, "stop")
    assert row["prompt"] == "Mail <EMAIL> or call <PHONE>, my key is <KEY>."
    assert row["messages"][1] == {"role": "user", "content": row["prompt"]}
    assert row["messages"][0]["content"] == "Be brief." and row["response"] == "A list is a sequence."
    assert row["pii"] == {"email": 2, "phone": 2, "key": 2}  # prompt and messages: both scrubbed
    stored = "".join(str(v) for r in store._read(store.traffic.select()) for v in r.values())
    assert "jane.doe" not in stored and "7946" not in stored and "sk-abc" not in stored


def test_scrubbing_can_be_turned_off(tmp_path) -> None:
    store = TrafficStore(f"sqlite:///{tmp_path / 'raw.db'}", scrub_pii=False)
    store.record(_record("cmpl-1", PII_PROMPT))
    store.close()  # close writes what is queued
    assert store.requests()[0]["prompt"] == PII_PROMPT and store.requests()[0]["pii"] == {}


def test_a_full_queue_drops_and_counts_without_waiting_for_the_writer(tmp_path) -> None:
    store = TrafficStore(f"sqlite:///{tmp_path / 'full.db'}", queue_size=2)
    gate, write = threading.Event(), store._write
    store._write = lambda records: (gate.wait(), write(records))  # the database hangs
    results: list[bool] = []

    def caller() -> None:
        results.append(store.record(_record("cmpl-0")))
        while store._queue.qsize():  # the writer has taken the first record and hangs on it
            time.sleep(0.001)
        results.extend(store.record(_record(f"cmpl-{i}")) for i in range(1, 8))

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "record() waited for the blocked writer"
    assert results == [True, True, True] + [False] * 5 and store.dropped == 5
    gate.set()
    store.close()
    assert [r["response_id"] for r in store.requests()] == ["cmpl-0", "cmpl-1", "cmpl-2"]


def test_retention_keeps_the_newest_rows(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'rows.db'}"
    store = TrafficStore(url, max_rows=5, batch_size=3)
    for i in range(12):
        store.record(_record(f"cmpl-{i}"))
    store.close()
    assert [r["response_id"] for r in store.requests()] == [f"cmpl-{i}" for i in range(7, 12)]
    assert TrafficStore(url, max_rows=2).count() == 2  # applied when a store is opened, too


def test_retention_by_age_drops_old_requests_and_feedback(store, tmp_path) -> None:
    old = time.time() - 3 * 86400
    store.record(_record("cmpl-old", created=old))
    store.record(_record("cmpl-new"))
    store.add_feedback(_feedback("cmpl-old", created=old), issued=True)
    store.add_feedback(_feedback("cmpl-new"), issued=True)
    store.flush()
    aged = TrafficStore(store.url, max_days=1)
    assert [r["response_id"] for r in aged.requests()] == ["cmpl-new"]
    assert [f["response_id"] for f in aged.feedback()] == ["cmpl-new"]
    aged.close()


def test_feedback_for_issued_or_recorded_ids_only(store) -> None:
    assert not store.add_feedback(_feedback("chatcmpl-unknown"))
    assert store.feedback() == []
    store.record(_record("cmpl-recorded"))
    store.flush()
    assert store.add_feedback(_feedback("cmpl-recorded", 1.0, "Call me at 555-123-4567."))
    assert store.add_feedback(_feedback("cmpl-not-sampled", -1.0), issued=True)
    rows = store.feedback()
    assert [(r["response_id"], r["rating"]) for r in rows] == [("cmpl-recorded", 1.0), ("cmpl-not-sampled", -1.0)]
    assert rows[0]["correction"] == "Call me at <PHONE>."
    [rated] = store.rated()
    assert rated["response_id"] == "cmpl-recorded" and rated["rating"] == 1.0
    assert (rated["prompt"], rated["response"]) == ("What is a list?", "A list is a sequence.")  # joined


def test_write_failures_are_counted_and_the_writer_goes_on(store) -> None:
    store.record(_record("cmpl-1"))
    store.flush()
    store.record(_record("cmpl-1"))  # the same response id again: the database refuses the row
    store.flush()
    store.record(_record("cmpl-2"))
    store.flush()
    assert store.failed_writes() == 1 and store.count() == 2


@pytest.mark.parametrize("kwargs", [{"max_rows": 0}, {"max_days": 0}, {"queue_size": 0}])
def test_bad_limits_are_one_clear_error(tmp_path, kwargs) -> None:
    with pytest.raises(LmoptError, match="traffic store"):
        TrafficStore(f"sqlite:///{tmp_path / 'x.db'}", **kwargs)


def test_the_store_on_postgresql(pg_url) -> None:  # noqa: F811
    store = TrafficStore(pg_url, max_rows=3)
    for i in range(5):
        store.record(_record(f"cmpl-{i}", PII_PROMPT))
    store.flush()
    assert store.add_feedback(_feedback("cmpl-4"))
    assert not store.add_feedback(_feedback("cmpl-0"))  # removed by retention, not issued here
    store.close()
    rows = store.requests()
    assert [r["response_id"] for r in rows] == ["cmpl-2", "cmpl-3", "cmpl-4"]
    assert "<EMAIL>" in rows[0]["prompt"] and store.rated()[0]["response_id"] == "cmpl-4"
    store.engine.dispose()
