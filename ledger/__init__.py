"""Meshmarket's local ledger: what a node knows about the market, in SQL.

    open_ledger(url=None) -> Ledger      SQLite file in $MESH_HOME by default, or any SQLAlchemy URL;
                                         migrated to this code's schema on open (Alembic)
    ledger.indexer.Indexer(ledger, chain).sync()
                                         the registry's and market's events -> rows, in batches
    Ledger.record_observation(...)       what this node saw off-chain (failures, timeouts, latency)
    Ledger.add_local_account(address)    this node's own consumer address (its jobs anchor reputation)
    Ledger.candidates(model, cap, n)     who a job could draw now
    Reputation(ledger).scores()          a score per provider (ledger/reputation.py; rules in ledger/outcomes.py)

The ledger never sends transactions. See docs/LEDGER.md.
"""

from sqlalchemy.engine import make_url

from meshmarket.ledger.database import default_url, make_engine
from meshmarket.ledger.evidence import Evidence
from meshmarket.ledger.migrate import upgrade
from meshmarket.ledger.outcomes import JOB_STATUSES, OPEN_MARKET, SEAT_OUTCOMES
from meshmarket.ledger.records import (
    BatchResult,
    ChainEvent,
    ChainIdentity,
    Cursor,
    DisputeRow,
    EarningsRow,
    JobProvider,
    JobRow,
    JurorRow,
    ManifestRow,
    ObservationKind,
    PeerRow,
    ProviderRow,
    RegistryParams,
    SeatRow,
    SlashRow,
)
from meshmarket.ledger.reputation import DEFAULT_POLICY, Ranked, Reputation, ReputationPolicy, Score, doubts
from meshmarket.ledger.sql import SqlLedger
from meshmarket.ledger.store import Ledger
from meshmarket.mesh.errors import LedgerError

__all__ = [
    "BatchResult", "ChainEvent", "ChainIdentity", "Cursor", "DEFAULT_POLICY", "DisputeRow", "EarningsRow", "Evidence",
    "JOB_STATUSES", "JobProvider", "JobRow", "JurorRow", "Ledger", "ManifestRow", "OPEN_MARKET", "ObservationKind",
    "PeerRow", "ProviderRow", "Ranked", "RegistryParams", "Reputation", "ReputationPolicy", "SEAT_OUTCOMES", "Score",
    "SeatRow", "SlashRow", "default_url", "doubts", "open_ledger",
]


def open_ledger(url: str | None = None, *, migrate: bool = True) -> Ledger:
    """Open (and create, and migrate to this code's schema) the ledger at `url`.

    Default: $MESH_LEDGER_URL, else $MESH_HOME/ledger.sqlite. Any SQLAlchemy URL works, e.g.
    postgresql+psycopg://user:pass@host/dbname.
    """
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
