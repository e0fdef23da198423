"""`python -m meshmarket.migrations`: the ledger's migrations by hand, for developers (see ledger/migrate.py)."""

from __future__ import annotations

import tempfile

import click
from alembic import command

from meshmarket.ledger.database import make_engine
from meshmarket.ledger.migrate import alembic_config, downgrade, head_revision, upgrade


@click.group(help="Run or write the ledger's Alembic migrations.")
def main() -> None:
    pass


@main.command()
@click.option("-m", "--message", required=True)
@click.option("--autogenerate", is_flag=True)
@click.option("--rev-id", default=None)
@click.option("--url", default=None, help="Database at head to diff against (default: a scratch SQLite).")
def revision(message: str, autogenerate: bool, rev_id: str | None, url: str | None) -> None:
    """Write a new migration version."""
    with tempfile.TemporaryDirectory() as tmp:
        target = url or f"sqlite:///{tmp}/scratch.sqlite"
        engine = make_engine(target)
        try:
            if url is None:
                upgrade(engine)
            command.revision(alembic_config(url=target), message=message, autogenerate=autogenerate, rev_id=rev_id)
        finally:
            engine.dispose()


@main.command(name="upgrade")
@click.argument("revision")
@click.option("--url", required=True)
def upgrade_cmd(revision: str, url: str) -> None:
    """Upgrade the database at URL to REVISION."""
    _on(url, upgrade, revision)


@main.command(name="downgrade")
@click.argument("revision")
@click.option("--url", required=True)
def downgrade_cmd(revision: str, url: str) -> None:
    """Downgrade the database at URL to REVISION."""
    _on(url, downgrade, revision)


def _on(url: str, step, revision: str) -> None:
    engine = make_engine(url)
    try:
        step(engine, revision)
    finally:
        engine.dispose()


@main.command()
def heads() -> None:
    """Print the head revision."""
    click.echo(head_revision())


if __name__ == "__main__":
    main()
