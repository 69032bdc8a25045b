"""The registry on a real PostgreSQL server: concurrent writers in separate processes lose nothing.

Needs a server (`postgres_server.pg_url`: a throwaway one from Debian's `postgresql`, or
`$LMOPT_TEST_PG_URL`); skips with the reason when there is none.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from lmopt.database import check_database
from lmopt.errors import LmoptError
from lmopt.monitor.registry import Registry
from postgres_server import pg_server, pg_url  # noqa: F401  (fixtures)

WRITERS, RUNS, EVENTS = 4, 25, 5

# One writer process: waits for the start file (so all open and write at once), then appends runs, alias events
# and figures of one shared model, through the registry's public API.
WRITER = f"""
import os, sys, time
from lmopt.monitor.registry import Registry
url, index, start = sys.argv[1], int(sys.argv[2]), sys.argv[3]
while not os.path.exists(start):
    time.sleep(0.005)
reg = Registry(url)
for i in range({RUNS}):
    reg.record("pgtest", f"model-{{index}}", {{"i": i, "writer": index}}, task="concurrency",
               model_hash="h" * 64, machine={{"host": "test"}})
    if i % ({RUNS} // {EVENTS}) == 0:
        reg.add_alias_event("production", "promote", f"{{index}}-{{i}}", None, f"user{{index}}")
        reg.upsert_model({{"hash": "h" * 64, "name": "shared", "figures": {{f"w{{index}}_{{i}}": i}}}})
"""


def _writers(url, tmp_path):
    start = tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(i), str(start)],
                              stderr=subprocess.PIPE, text=True) for i in range(WRITERS)]
    time.sleep(0.5)
    start.touch()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    return [p.returncode for p in procs], errors


def test_concurrent_writers_on_postgres(pg_url, tmp_path):  # noqa: F811
    Registry(pg_url)  # the team's database exists before its members write to it
    codes, errors = _writers(pg_url, tmp_path)
    assert codes == [0] * WRITERS, errors
    reg = Registry(pg_url)
    runs = reg.query(kind="pgtest", limit=10_000)
    assert len(runs) == WRITERS * RUNS and len({r["id"] for r in runs}) == WRITERS * RUNS
    for w in range(WRITERS):  # each writer's runs all arrived, in its own order
        mine = sorted((r["id"], r["metrics"]["i"]) for r in runs if r["metrics"]["writer"] == w)
        assert [i for _, i in mine] == list(range(RUNS))
    events = reg.alias_events_of("production")
    assert len(events) == WRITERS * EVENTS and [e["id"] for e in events] == sorted(e["id"] for e in events)
    (model,) = reg.model_rows()
    # every writer's figures of the shared model survived the concurrent upserts
    assert len(model["figures"]) == WRITERS * EVENTS, sorted(model["figures"])


def test_writers_creating_a_fresh_database_at_once(pg_url, tmp_path):  # noqa: F811
    codes, errors = _writers(pg_url, tmp_path)  # each opens the empty database at the same moment
    assert codes == [0] * WRITERS, errors
    assert len(Registry(pg_url).query(kind="pgtest", limit=10_000)) == WRITERS * RUNS


def test_unreachable_server_and_missing_driver_are_one_line(monkeypatch):
    with pytest.raises(LmoptError) as err:
        check_database("postgresql://me:secret@127.0.0.1:1/lmopt", "registry")
    message = str(err.value)
    assert "\n" not in message and "secret" not in message
    assert message.startswith("registry 'postgresql+psycopg://me:***@127.0.0.1:1/lmopt': cannot connect")
    assert "start the database server" in message

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("psycopg")
                        else real(name, *a))
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ModuleNotFoundError
    with pytest.raises(LmoptError, match=r"driver 'psycopg' is not installed: pip install 'lmopt\[postgres\]'"):
        check_database("postgresql://me@127.0.0.1:1/lmopt", "tune storage")


def test_check_database_accepts_a_live_server(pg_url):  # noqa: F811
    url = check_database(pg_url.replace("postgresql+psycopg://", "postgresql://"), "registry")
    assert url.startswith("postgresql+psycopg://")
    assert Registry(url).query() == []


def test_registry_on_an_unreachable_server_is_one_line():
    with pytest.raises(LmoptError) as err:
        Registry("postgresql://me:secret@127.0.0.1:1/lmopt")
    message = str(err.value)
    assert "\n" not in message and "secret" not in message and "cannot connect" in message
