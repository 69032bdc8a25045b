"""Database URLs for the Optuna study and the registry: pick the installed driver, fail in one line.

`check_database(url, what)` is called where a store opens a URL (the registry, the tune storage):
- `postgresql://` and `postgres://` URLs get the driver that is installed: psycopg 3
  (`postgresql+psycopg://`, the `postgres` extra) unless only psycopg2 is there. SQLAlchemy before 2.1
  maps a bare `postgresql://` to psycopg2, so a user who installed the extra would be told
  `No module named 'psycopg2'`; `postgres://` (Heroku-style URLs) no SQLAlchemy version accepts.
- A missing driver, an unknown scheme or a server that does not answer is an `LmoptError` naming what
  to install or start (the CLI prints it as one line and exits 2), with the password masked.
SQLite URLs are returned unchanged and not opened here (their stores create the file).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from lmopt.errors import LmoptError

CONNECT_TIMEOUT_S = 5
"""Seconds to wait for a server before calling it unreachable (libpq's connect_timeout)."""

# dialect -> (driver module, pip requirement, lmopt extra or None)
DRIVERS = {"postgresql": ("psycopg", "psycopg[binary]", "postgres"),
           "mysql": ("pymysql", "pymysql", None)}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def database_url(url: str) -> str:
    """`url` with an explicit driver where the bare scheme would pick one that is not installed."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        driver = "psycopg2" if _installed("psycopg2") and not _installed("psycopg") else "psycopg"
        return f"postgresql+{driver}://{rest}"
    return url


def masked(url: str) -> str:
    """`url` with its password replaced by `***` (for messages and logs)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show only the scheme
        return url.partition("://")[0] + "://..."


def _install_hint(dialect: str, missing: str) -> str:
    module, requirement, extra = DRIVERS.get(dialect, (missing, missing, None))
    if extra is not None:
        return f"pip install 'lmopt[{extra}]' (or pip install '{requirement}')"
    return f"pip install {requirement}"


def create_checked_engine(url: str, what: str, **kwargs: Any) -> Any:
    """A SQLAlchemy engine for `url` (driver picked by `database_url`), with one-line errors.

    `what` names the store in messages ("registry", "tune storage"). Non-SQLite URLs are connected
    to once, so an unreachable server is reported here rather than deep inside the first query.
    """
    import sqlalchemy as sa

    url = database_url(url)
    shown = masked(url)
    dialect = url.partition("://")[0].split("+")[0]
    if dialect == "postgresql":
        kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    try:
        engine = sa.create_engine(url, **kwargs)
    except ModuleNotFoundError as exc:
        raise LmoptError(f"{what} '{shown}': the database driver '{exc.name}' is not installed: "
                         f"{_install_hint(dialect, exc.name or dialect)}") from None
    except Exception as exc:  # sa.exc.ArgumentError, NoSuchModuleError: a malformed URL or unknown scheme
        raise LmoptError(f"{what} '{shown}': not a database URL SQLAlchemy can open "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None
    if dialect != "sqlite":
        try:
            with engine.connect():
                pass
        except Exception as exc:
            engine.dispose()
            raise LmoptError(f"{what} '{shown}': cannot connect ({_first_line(exc)}); start the database "
                             "server or fix the URL (host, port, user, password, database)") from None
    return engine


def check_database(url: str, what: str) -> str:
    """The URL to hand to a store (see `database_url`), after checking its driver and server."""
    create_checked_engine(url, what).dispose()
    return database_url(url)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
