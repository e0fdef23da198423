"""The ledger store: the one interface (`Ledger`) every node uses, and `open_ledger`.

`Ledger` is abstract so provider, consumer and CLI code depend on what the ledger answers, not on
SQL; `ledger.sql.SqlLedger` implements it on SQLAlchemy for SQLite (default, one file per node)
and PostgreSQL (any `postgresql+psycopg://` URL). The one test suite runs against both.

Opening a ledger migrates it to the schema this code expects (Alembic, ledger/migrate.py). SQLite
is opened so that a provider node and a CLI can use one file at once: WAL (readers never block the
writer), a busy timeout (a writer waits for the other instead of failing), foreign keys on, and
write transactions that take the write lock up front (BEGIN IMMEDIATE) so a read-then-write never
fails half-way with "database is locked".
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from mesh import config
from mesh.errors import LedgerError

from ledger.records import (
    BatchResult,
    ChainEvent,
    ChainIdentity,
    Cursor,
    EarningsRow,
    JobRow,
    ManifestRow,
    ObservationKind,
    PeerRow,
    ProviderRow,
    RegistryParams,
    SlashRow,
)
from ledger.reputation import Evidence

#: Seconds a writer waits for another process's write lock before giving up: a sync batch holds
#: it for well under a second, so this only runs out if a process hangs while writing.
BUSY_TIMEOUT_S = 30.0
LEDGER_URL_ENV = "MESH_LEDGER_URL"


def default_url() -> str:
    """$MESH_LEDGER_URL, else the SQLite file $MESH_HOME/ledger.sqlite."""
    return os.environ.get(LEDGER_URL_ENV) or f"sqlite:///{config.home() / 'ledger.sqlite'}"


class Ledger(ABC):
    """A node's local record of the market: chain facts (from the indexer) and its own observations.

    Chain-derived data is written only through `init_cursor` / `apply_batch` / `reset_chain_data`
    (the indexer's API); local facts through `record_observation`, `peer_seen`, `peer_failed`,
    `save_manifest`. Every method is synchronous and safe to call from several processes at once.
    """

    url: str

    # -- the indexer's side
    @abstractmethod
    def cursor(self) -> Cursor | None:
        """Where the indexer stands, or None for a ledger that never indexed a chain."""

    @abstractmethod
    def init_cursor(self, identity: ChainIdentity, params: RegistryParams, start_block: int,
                    parent_hash: str) -> Cursor:
        """Bind this ledger to one chain history; indexing starts at `start_block`.
        Returns the existing cursor unchanged when another process bound it first."""

    @abstractmethod
    def apply_batch(self, events: Sequence[ChainEvent], *, from_block: int, to_block: int,
                    to_hash: str) -> BatchResult:
        """Apply the decoded logs of blocks [from_block, to_block] and move the cursor to
        `to_block` in one transaction. Logs already stored (same tx hash and log index) are
        skipped; a range the cursor has already passed is a no-op."""

    @abstractmethod
    def reset_chain_data(self) -> None:
        """Forget everything learned from the chain (and the cursor); keep local observations."""

    # -- local facts
    @abstractmethod
    def record_observation(self, provider: str, kind: ObservationKind, value_ms: float | None = None, *,
                           job_id: str | bytes | None = None, at: float | None = None) -> None:
        """Record what this node saw of `provider`: a connect failure, a timeout, or the
        first-token latency of a delivery (`value_ms`). `job_id` ties it to a job."""

    @abstractmethod
    def peer_seen(self, peer_id: str, address: str | None = None, *, at: float | None = None) -> None: ...

    @abstractmethod
    def peer_failed(self, peer_id: str, *, at: float | None = None) -> None: ...

    @abstractmethod
    def peers(self, *, limit: int = 100) -> list[PeerRow]: ...

    @abstractmethod
    def save_manifest(self, provider: str, manifest_hash: str | bytes, peer_id: str, multiaddrs: Sequence[str],
                      body: Mapping[str, Any], *, fetched_at: float | None = None) -> None:
        """Store a manifest fetched from a peer. The caller checks it against the on-chain hash."""

    @abstractmethod
    def manifest(self, provider: str, manifest_hash: str | bytes | None = None) -> ManifestRow | None:
        """The manifest with that hash, else the provider's most recently fetched one."""

    # -- queries
    @abstractmethod
    def provider(self, address: str) -> ProviderRow | None: ...

    @abstractmethod
    def providers(self, *, model_hash: str | bytes | None = None, registered: bool | None = None,
                  max_price: int | None = None) -> list[ProviderRow]: ...

    @abstractmethod
    def candidates(self, model_hash: str | bytes, max_price: int, max_tokens: int) -> list[ProviderRow]:
        """Providers a job for `model_hash` could be opened with right now, as far as the last
        sync knows: registered for the model, price <= max_price, and free stake covering the
        job's lock (the registry's openJobFunds checks the same)."""

    @abstractmethod
    def job(self, job_id: str | bytes) -> JobRow | None: ...

    @abstractmethod
    def jobs(self, *, limit: int = 50, status: str | None = None, consumer: str | None = None,
             provider: str | None = None) -> list[JobRow]:
        """Most recent first."""

    @abstractmethod
    def earnings(self, provider: str | None = None) -> list[EarningsRow]: ...

    @abstractmethod
    def slashes(self, *, provider: str | None = None, limit: int = 50) -> list[SlashRow]:
        """Most recent first."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Rows per table, for reports."""

    # -- reputation evidence (ledger/reputation.py scores it)
    @abstractmethod
    def evidence(self, providers: Iterable[str] | None = None) -> dict[str, Evidence]:
        """Decayed evidence counters per provider (all providers when None)."""

    @abstractmethod
    def save_scores(self, scores: Mapping[str, float], at: float) -> None: ...

    @abstractmethod
    def rebuild_reputation(self, half_life_s: float) -> int:
        """Recompute every provider's evidence from results, replacements and observations with
        another half-life; returns the number of providers."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ engines

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


def open_ledger(url: str | None = None, *, migrate: bool = True) -> Ledger:
    """Open (and create, and migrate to this code's schema) the ledger at `url`.

    Default: $MESH_LEDGER_URL, else $MESH_HOME/ledger.sqlite. Any SQLAlchemy URL works, e.g.
    postgresql+psycopg://user:pass@host/dbname.
    """
    from ledger.migrate import upgrade
    from ledger.sql import SqlLedger

    url = url or default_url()
    engine = make_engine(url)
    try:
        if migrate:
            upgrade(engine)
    except LedgerError:
        engine.dispose()
        raise
    except Exception as exc:
        engine.dispose()
        raise LedgerError(f"cannot open the ledger at {make_url(url).render_as_string(hide_password=True)}: {exc}",
                          "check the URL, and that the database server is running") from exc
    return SqlLedger(engine, url)
