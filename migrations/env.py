"""Alembic's environment for the ledger: the target is ledger.models' metadata.

Run from `ledger.migrate`, which hands over an open connection already inside a transaction that
holds the database's write lock (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so
two nodes opening one ledger at once migrate it exactly once. The `alembic` CLI path (a URL in
the config, no connection) is kept for developers and for offline SQL scripts (`--sql`).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from meshmarket.ledger.models import Base

config = context.config
target_metadata = Base.metadata

# render_as_batch: SQLite cannot ALTER most things in place, so future versions that alter a
# table are generated as copy-and-move batches, which work on every backend.
_OPTIONS = dict(target_metadata=target_metadata, render_as_batch=True, compare_type=True)


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, **_OPTIONS)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
