"""Meshmarket's local ledger: what a node knows about the market, in SQL.

    open_ledger(url=None) -> Ledger      SQLite file in $MESH_HOME by default, or any SQLAlchemy URL;
                                         migrated to this code's schema on open (Alembic)
    ledger.indexer.Indexer(ledger, chain).sync()
                                         the registry's and market's events -> rows, in batches
    Ledger.record_observation(...)       what this node saw off-chain (failures, timeouts, latency)
    Ledger.candidates(model, cap, n)     who could take a job now
    Reputation(ledger).rank_providers()  score and rank providers for a job

The ledger never sends transactions. See docs/LEDGER.md.
"""

from ledger.records import (
    BatchResult,
    ChainEvent,
    ChainIdentity,
    Cursor,
    EarningsRow,
    JobProvider,
    JobRow,
    ManifestRow,
    ObservationKind,
    PeerRow,
    ProviderRow,
    RegistryParams,
    SlashRow,
)
from ledger.reputation import DEFAULT_POLICY, Evidence, Ranked, Reputation, ReputationPolicy, Score
from ledger.store import Ledger, default_url, open_ledger

__all__ = [
    "BatchResult", "ChainEvent", "ChainIdentity", "Cursor", "DEFAULT_POLICY", "EarningsRow", "Evidence",
    "JobProvider", "JobRow", "Ledger", "ManifestRow", "ObservationKind", "PeerRow", "ProviderRow", "Ranked",
    "RegistryParams", "Reputation", "ReputationPolicy", "Score", "SlashRow", "default_url", "open_ledger",
]
