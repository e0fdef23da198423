"""Run the ledger's Alembic migrations from code: the config is built here, never read from a
file relative to the working directory, and the scripts are the ones shipped in `migrations/`.

`upgrade(engine)` is what `open_ledger` calls: it is a no-op when the schema is at head, refuses a
ledger written by a newer Meshmarket, and otherwise migrates inside one transaction that holds the
database's write lock, so two processes opening a fresh ledger at once cannot both migrate it.

Developers: `python -m meshmarket.migrations revision --autogenerate -m "add x" [--url URL]` writes a new
version against a scratch SQLite database at head; `python -m meshmarket.migrations upgrade|downgrade REV
--url URL` runs migrations by hand (migrations/__main__.py).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from meshmarket import migrations
from meshmarket.mesh.errors import LedgerError

SCRIPT_LOCATION = Path(migrations.__file__).resolve().parent
#: Any constant works; it names the advisory lock PostgreSQL nodes take while migrating.
_PG_LOCK_KEY = 0x6D657368_6C656467  # "meshledg"


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise LedgerError(f"the ledger's migrations have {len(heads)} heads", "merge them (alembic merge)")
    return heads[0]


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _write_connection(engine: Engine) -> Connection:
    # On SQLite, ledger.store's begin hook turns this option into BEGIN IMMEDIATE: the migration
    # holds the write lock from its first statement, so a second process waits instead of racing.
    return engine.connect().execution_options(mesh_write=True)


def _run(engine: Engine, fn) -> None:
    with _write_connection(engine) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        fn(conn)


def upgrade(engine: Engine, revision: str = "head") -> bool:
    """Bring the schema to `revision`; returns whether anything ran."""
    head = head_revision()
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    with engine.connect() as conn:
        current = current_revision(conn)
    if current is not None and current not in known:
        raise LedgerError(
            f"the ledger is at schema version {current}, which this Meshmarket does not know",
            "it was written by a newer version: upgrade Meshmarket, or use another ledger",
        )
    if revision == "head" and current == head:
        return False
    ran = False

    def go(conn: Connection) -> None:
        nonlocal ran
        # Re-read under the lock: another process may have migrated while we waited for it.
        if revision == "head" and current_revision(conn) == head:
            return
        command.upgrade(alembic_config(conn), revision)
        ran = True

    _run(engine, go)
    return ran


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, lambda conn: command.downgrade(alembic_config(conn), revision))
