"""Alembic environment and versions of the ledger's schema, shipped inside the package.

Nodes never run `alembic` by hand: `ledger.open_ledger` upgrades to head on open (ledger/migrate.py
builds the Alembic config in code, so no alembic.ini is looked up relative to the working directory).
Developers make a new version with `python -m meshmarket.ledger.migrate revision --autogenerate -m "..."`.
"""
