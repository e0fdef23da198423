"""Where a ledger lives and how its database is opened (SQLAlchemy engines).

SQLite is opened so that a provider node and a CLI can use one file at once: WAL (readers never
block the writer), a busy timeout (a writer waits for the other instead of failing), foreign keys
on, and write transactions that take the write lock up front (BEGIN IMMEDIATE) so a
read-then-write never fails half-way with "database is locked". PostgreSQL needs nothing special.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from meshmarket.mesh import config
from meshmarket.mesh.errors import LedgerError

#: Seconds a writer waits for another process's write lock before giving up: a sync batch holds
#: it for well under a second, so this only runs out if a process hangs while writing.
BUSY_TIMEOUT_S = 30.0
LEDGER_URL_ENV = "MESH_LEDGER_URL"


def default_url() -> str:
    """$MESH_LEDGER_URL, else the SQLite file $MESH_HOME/ledger.sqlite."""
    return os.environ.get(LEDGER_URL_ENV) or f"sqlite:///{config.home() / 'ledger.sqlite'}"


def configure_engine(engine: Engine) -> Engine:
    """Per-connection settings a shared SQLite file needs; nothing to do for PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 — DBAPI objects are untyped
        # Let SQLAlchemy's begin hook below issue BEGIN, instead of pysqlite's implicit one that
        # starts transactions late and never as IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")
        # Safe with WAL: a power cut may lose the last commits, never corrupt the file.
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        # Writers lock up front: a deferred transaction that reads, then writes, fails with
        # SQLITE_BUSY when another process committed in between, and no timeout helps.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("mesh_write") else "BEGIN")

    return engine


def make_engine(url: str) -> Engine:
    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise LedgerError(f"{url!r} is not a database URL", "use e.g. sqlite:///path/ledger.sqlite or "
                          "postgresql+psycopg://user@host/db") from exc
    kwargs: dict[str, Any] = {}
    if u.get_backend_name() == "sqlite":
        if u.database in (None, "", ":memory:"):
            # One in-memory database per connection otherwise: share one connection.
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
            path = os.path.dirname(os.path.abspath(u.database))
            os.makedirs(path, exist_ok=True)
    elif u.get_backend_name() == "postgresql":
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(u, **kwargs)
    except Exception as exc:  # a missing driver raises ImportError, a bad option TypeError
        raise LedgerError(f"cannot use the ledger database {u.render_as_string(hide_password=True)}: {exc}") from exc
    return configure_engine(engine)
