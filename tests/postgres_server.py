"""A throwaway PostgreSQL server for the tests that need one: `from postgres_server import pg_url`.

`pg_url` (per test) is the SQLAlchemy URL of a fresh, empty database. The server is
`$LMOPT_TEST_PG_URL` when set (its user must be allowed to create databases), else one started for the
session from Debian's `postgresql` package: `initdb` into a temp dir, `pg_ctl start` on a free port of
127.0.0.1, run as the `postgres` user when the tests run as root (PostgreSQL refuses root). The tests
skip, saying what to install, when the driver or the server binaries are missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

TEST_PG_ENV = "LMOPT_TEST_PG_URL"


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return cands[-1] if cands else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    """`cmd` run as `postgres` when we are root (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(cmd)]


def _start_server(root: Path) -> str:
    """initdb + pg_ctl start in `root`; returns the admin URL (database `postgres`)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql, "
                    f"or set {TEST_PG_ENV} to a server's URL")
    if os.geteuid() == 0:
        try:
            import pwd

            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run(_as_server_user([initdb, "-D", str(data), "-U", "lmopt", "--auth=trust", "-E", "UTF8",
                                    "--no-sync"]), **run)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w",
                                    "-o", options, "start"]), **run)
    return f"postgresql+psycopg://lmopt@127.0.0.1:{port}/postgres"


def _stop_server(root: Path) -> None:
    pg_ctl = _pg_bin("pg_ctl")
    subprocess.run(_as_server_user([pg_ctl, "-D", str(root / "data"), "-m", "immediate", "stop"]),
                   capture_output=True, timeout=60)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Admin URL of the session's PostgreSQL server (see the module docstring)."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed: pip install 'psycopg[binary]'")
    from lmopt.database import database_url

    if os.environ.get(TEST_PG_ENV):
        yield database_url(os.environ[TEST_PG_ENV])
        return
    root = Path(tempfile.mkdtemp(prefix="lmopt-pg-"))  # not under pytest's tmp: the server user must enter it
    try:
        url = _start_server(root)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.cmd[-1]}: {exc.stderr.strip()[-500:]}")
    try:
        yield url
    finally:
        _stop_server(root)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """URL of a fresh database on the session's server, dropped after the test."""
    import sqlalchemy as sa

    name = f"lmopt_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.SQLAlchemyError as exc:
        admin.dispose()
        pytest.skip(f"cannot create a test database on {TEST_PG_ENV}'s server: {str(exc).splitlines()[0]}")
    url = sa.engine.make_url(pg_server).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
