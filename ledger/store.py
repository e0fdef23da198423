"""The ledger store: the one interface (`Ledger`) every node uses.

`Ledger` is abstract so provider, consumer and CLI code depend on what the ledger answers, not on
SQL; `ledger.sql.SqlLedger` implements it on SQLAlchemy for SQLite (default, one file per node)
and PostgreSQL (any `postgresql+psycopg://` URL). The one test suite runs against both.
`ledger.open_ledger` opens (and migrates) one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meshmarket.ledger.evidence import Evidence
from meshmarket.ledger.outcomes import OPEN_MARKET
from meshmarket.ledger.records import (
    BatchResult,
    ChainEvent,
    ChainIdentity,
    Cursor,
    EarningsRow,
    JobRow,
    JurorRow,
    ManifestRow,
    ObservationKind,
    PeerRow,
    ProviderRow,
    RegistryParams,
    SlashRow,
)

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
        first-token latency of a delivery (`value_ms`). `job_id` ties it to a job, which makes the
        job this node's own (its committee then anchors reputation); a timeout in a job counts as
        a missing answer unless the chain shows the seat had a result."""

    @abstractmethod
    def add_local_account(self, address: str, *, at: float | None = None) -> None:
        """Declare a consumer address as this node's own: its jobs (past and future) are local."""

    @abstractmethod
    def local_accounts(self) -> list[str]: ...

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
    def providers(self, *, model_hash: str | bytes | None = None, group: str | bytes | None = None,
                  registered: bool | None = None, max_price: int | None = None) -> list[ProviderRow]: ...

    @abstractmethod
    def candidates(self, model_hash: str | bytes, max_price: int, max_tokens: int,
                   group: str | bytes = OPEN_MARKET) -> list[ProviderRow]:
        """Who a job for `model_hash` in `group` (default: the open market) could draw right now, as
        far as the last sync knows: in the pool, price <= max_price, and a seat lock of at most
        free stake / maxLockShare (the registry's draw skips everyone else)."""

    @abstractmethod
    def job(self, job_id: str | bytes) -> JobRow | None: ...

    @abstractmethod
    def jobs(self, *, limit: int = 50, status: str | None = None, consumer: str | None = None,
             provider: str | None = None) -> list[JobRow]:
        """Most recent first."""

    @abstractmethod
    def juries(self, *, juror: str | None = None, limit: int = 50) -> list[JurorRow]:
        """Jury seats (who judged which job, whether it revealed, what it was paid), newest first."""

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
        """Recompute every provider's evidence from the seats' outcomes and this node's observations
        with another half-life; returns the number of providers."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
