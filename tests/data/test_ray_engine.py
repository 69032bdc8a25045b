"""`engine: ray` on a local two-worker Ray cluster: the output equals the local engine's row for row.

The reference is the local engine (workers=1) on the same input: kept rows, removed rows with their
reasons and the `of line` each names, bad rows and the whole report must be identical. Skips when
ray is not installed (`pip install 'lmopt[ray]'`).
"""

from __future__ import annotations

import json
import random
import sys

import pytest

from lmopt.data.clean import clean
from lmopt.data.config import CleanConfig
from lmopt.data.planted import plant, synthetic_doc
from lmopt.errors import LmoptError

from .test_ray_read import messy_jsonl

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'lmopt[ray]'")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with two worker CPUs for this module (starting one takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run_both(data, tmp_path, **config):
    """Clean `data` with each engine; returns {engine: (kept text, removed text, report dict)}."""
    out = {}
    for engine in ("local", "ray"):
        cfg = CleanConfig(engine=engine, workers=1 if engine == "local" else 2, **config)
        target = tmp_path / engine / "out.jsonl"
        result = clean(data, cfg, output=target)
        report = result.report.to_dict()
        report.pop("seconds")
        removed = target.parent / "removed.jsonl"
        out[engine] = (target.read_text(), removed.read_text() if removed.exists() else None, report)
    return out


@pytest.fixture
def planted_corpus(docs, tmp_path):
    rng = random.Random(2)
    items = [synthetic_doc(rng, sentences=2) for _ in range(10)]
    task = tmp_path / "eval.txt"
    task.write_text("\n\n".join(items))
    planted = plant(docs * 3, items, rng, exact=30, near=30, pii=20, contaminated=5, junk_docs=10,
                    edit_rate=0.02)
    path = tmp_path / "planted.jsonl"
    lines = [json.dumps({"text": r["text"], "id": r["id"], "kind": r["kind"]}) for r in planted.rows]
    lines[5:5] = ["{not json", json.dumps({"body": "no text field"}), ""]
    path.write_text("\r\n".join(lines) + "\n")
    return path, task


def test_planted_jsonl_equals_the_local_engine(cluster, planted_corpus, tmp_path):
    from lmopt.data.ray_read import plan_shards

    path, task = planted_corpus
    out = run_both(path, tmp_path, quality={"min_words": 20}, pii={"enabled": True}, decontaminate=[str(task)],
                   keep_removed=True, chunk_size=16)
    assert out["ray"] == out["local"]
    kept, removed, report = out["ray"]
    assert report["removed"]["exact_duplicate"] >= 30 and report["removed"]["near_duplicate"] >= 10
    assert report["bad_rows"]["total"] == 2 and report["rows_with_pii"] > 0
    # the duplicates were found across shards: a copy and the row it copies in different shards
    starts = [s.first_line for s in plan_shards(path, None, 2)]
    assert len(starts) >= 4

    def shard(line):
        return sum(s <= line for s in starts)

    dups = [json.loads(r) for r in removed.splitlines() if "duplicate" in r]
    assert sum(shard(d["line"]) != shard(int(d["detail"].split()[-1])) for d in dups) > len(dups) // 2


def test_every_line_ending_and_bad_row(cluster, docs, tmp_path):
    path = messy_jsonl(tmp_path / "messy.jsonl", docs)  # each document six times, numbered: near copies
    out = run_both(path, tmp_path, quality={"enabled": False}, keep_removed=True)
    assert out["ray"] == out["local"]
    report = out["ray"][2]
    assert report["removed"]["near_duplicate"] > 4 * len(docs) and report["bad_rows"]["total"] > 30


def test_parquet_and_in_memory_rows(cluster, docs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = docs + [d.upper() for d in docs[:10]] + docs[20:25]
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"abstract": texts, "id": list(range(len(texts)))}), path, row_group_size=16)
    out = run_both(path, tmp_path, quality={"min_words": 20})
    assert out["ray"] == out["local"] and out["ray"][2]["removed"] == {"exact_duplicate": 15}

    items = [{"text": t, "n": i} for i, t in enumerate(texts)] + [{"body": "no text"}, texts[3]]
    cfgs = [CleanConfig(engine=e, workers=w, quality={"min_words": 20}, dedup={"mode": "exact"})
            for e, w in (("local", 1), ("ray", 2))]
    local, on_ray = (clean(items, cfg) for cfg in cfgs)
    assert on_ray.rows == local.rows and len(local.rows) == len(docs)  # exact copies out, rows as given
    assert on_ray.report.to_dict()["bad_rows"] == local.report.to_dict()["bad_rows"]


def test_pubmedqa_with_planted_duplicates_equals_the_local_engine(cluster, data_dir, tmp_path):
    """The goal of issue 17: identical output on the shared PubMedQA corpus with planted duplicates."""
    from lmopt.data.load import open_records

    docs = [r.text for r in open_records(data_dir / "pubmedqa" / "pubmedqa_abstracts.txt")]
    rng = random.Random(0)
    items = [synthetic_doc(rng, sentences=2) for _ in range(20)]
    planted = plant(docs, items, rng, exact=100, near=100, pii=100, contaminated=20, junk_docs=50)
    path = tmp_path / "pubmedqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in planted.rows))
    out = run_both(path, tmp_path, pii={"enabled": True}, keep_removed=True)
    assert out["ray"] == out["local"]
    assert out["ray"][2]["removed"]["exact_duplicate"] + out["ray"][2]["removed"]["near_duplicate"] >= 190


def test_unreachable_address_is_one_line(docs, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    with pytest.raises(LmoptError) as err:
        clean(docs[:3], CleanConfig(engine="ray", address="127.0.0.1:1"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("address '127.0.0.1:1': no Ray cluster answers at 127.0.0.1:1")
    assert "ray start --head" in message


def test_missing_ray_and_bad_options(docs, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when it is not installed
    with pytest.raises(LmoptError, match=r"pip install 'lmopt\[ray\]'"):
        clean(docs[:3], CleanConfig(engine="ray"))
    with pytest.raises(LmoptError, match="semantic deduplication runs on the local engine only"):
        CleanConfig.parse({"engine": "ray", "dedup": {"mode": "semantic", "embed_model": "x"}})
    with pytest.raises(LmoptError, match="address: joins a Ray cluster"):
        CleanConfig.parse({"address": "auto"})


def test_address_joins_a_running_cluster(docs, tmp_path):
    """A head node started with `ray start`, joined by address from a fresh process (as the CLI does)."""
    import contextlib
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert head.poll() is None, f"ray start --head exited: {head.stderr.read()[-1000:]}"
            assert time.time() < deadline, "ray start --head did not come up in 2 minutes"
            time.sleep(0.5)
        data = tmp_path / "in.jsonl"
        data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs + docs[:5]))
        script = ("import sys; from lmopt.data.clean import clean; from lmopt.data.config import CleanConfig; "
                  "r = clean(sys.argv[1], CleanConfig(engine='ray', address=sys.argv[2], quality={'min_words': 20})); "
                  "print(len(r.rows), r.report.removed)")
        host = socket.gethostbyname(socket.gethostname())
        done = subprocess.run([sys.executable, "-c", script, str(data), f"{host}:{port}"], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == f"{len(docs)} {{'exact_duplicate': 5}}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)  # the head and the processes it started, nothing else
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
