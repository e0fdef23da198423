"""The ledger's tables: SQLAlchemy 2 typed models, the single source of the schema.

Alembic's versions in migrations/ must build exactly these tables (tests/test_ledger.py checks it
with `compare_metadata`). Conventions:
  - addresses are checksummed `String(42)`; hashes and job ids lowercase 0x hex `String(66)`;
  - token amounts use `Amount`: exact integers, never floats;
  - chain times are `BigInteger` unix seconds (block timestamps); local times are `Double` unix
    seconds (time.time() of this node);
  - rows derived from one log carry (tx_hash, log_index) under a unique key, which is what makes
    indexing idempotent;
  - the reputation table holds decayed evidence counters (floats: scores are not money).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

#: Stable constraint names, so later migrations (batch mode on SQLite) can find and alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_INT_MAX = 2**63 - 1


class Amount(TypeDecorator[int]):
    """Token base units as exact integers.

    PostgreSQL: NUMERIC(78, 0), which holds any uint256. SQLite has no exact type wider than its
    64-bit INTEGER (a larger number would silently become a float), so there the column is
    INTEGER and a value beyond 2^63-1 is refused loudly instead. The token's supply cap is
    2^64-1, so one amount that large needs more than half of all MESH in existence; a node that
    must accept that uses PostgreSQL.
    """

    impl = Numeric(78, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(78, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"token amounts are integers (base units), got {value!r}")
        if dialect.name == "sqlite" and not -SQLITE_INT_MAX - 1 <= value <= SQLITE_INT_MAX:
            raise OverflowError(
                f"amount {value} does not fit SQLite's 64-bit integers; use a PostgreSQL ledger (--ledger URL)"
            )
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


def _id_type() -> TypeEngine[int]:
    # SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), not a BIGINT one.
    return BigInteger().with_variant(Integer(), "sqlite")


ADDRESS = String(42)
HASH = String(66)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# ------------------------------------------------------------------------------ chain: raw log

class EventLog(Base):
    """Every indexed log, decoded: the audit trail every derived row can be rebuilt from."""

    __tablename__ = "chain_events"
    id: Mapped[int] = mapped_column(_id_type(), primary_key=True, autoincrement=True)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_hash: Mapped[str] = mapped_column(HASH)
    block_time: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(HASH)
    log_index: Mapped[int] = mapped_column(Integer)
    contract: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(32), index=True)
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    __table_args__ = (UniqueConstraint("tx_hash", "log_index"),)


# ------------------------------------------------------------------------------ chain: state

class Provider(Base):
    """A provider's listing and money as last seen in the registry's events."""

    __tablename__ = "providers"
    address: Mapped[str] = mapped_column(ADDRESS, primary_key=True)
    registered: Mapped[bool] = mapped_column(Boolean, default=False)
    model_hash: Mapped[str | None] = mapped_column(HASH)
    manifest_hash: Mapped[str | None] = mapped_column(HASH)
    price: Mapped[int | None] = mapped_column(Amount)
    #: The libp2p multiaddr (…/p2p/<peer id>) the provider announced when it last registered.
    endpoint: Mapped[str | None] = mapped_column(String(256))
    stake: Mapped[int] = mapped_column(Amount, default=0)
    #: Mirrors the registry's lock: sum of lockFor(maxTokens, price) over the provider's open jobs.
    locked: Mapped[int] = mapped_column(Amount, default=0)
    thawing: Mapped[int] = mapped_column(Amount, default=0)
    thaw_ready_at: Mapped[int | None] = mapped_column(BigInteger)
    owed: Mapped[int] = mapped_column(Amount, default=0)
    earned: Mapped[int] = mapped_column(Amount, default=0)
    withdrawn: Mapped[int] = mapped_column(Amount, default=0)
    slashed: Mapped[int] = mapped_column(Amount, default=0)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    registered_at: Mapped[int | None] = mapped_column(BigInteger)
    first_block: Mapped[int] = mapped_column(BigInteger)
    last_block: Mapped[int] = mapped_column(BigInteger)
    # Discovery asks "who serves this model now, and at what price".
    __table_args__ = (Index(None, "model_hash", "registered", "price"),)


class Job(Base):
    __tablename__ = "jobs"
    job_id: Mapped[str] = mapped_column(HASH, primary_key=True)
    consumer: Mapped[str] = mapped_column(ADDRESS)
    model_hash: Mapped[str] = mapped_column(HASH, index=True)
    prompt_hash: Mapped[str] = mapped_column(HASH)
    max_tokens: Mapped[int] = mapped_column(BigInteger)
    price_cap: Mapped[int] = mapped_column(Amount)
    opened_at: Mapped[int] = mapped_column(BigInteger, index=True)
    opened_block: Mapped[int] = mapped_column(BigInteger)
    escrow: Mapped[int] = mapped_column(Amount)
    status: Mapped[str] = mapped_column(String(8))
    outcome: Mapped[str | None] = mapped_column(String(12))
    output_hash: Mapped[str | None] = mapped_column(HASH)
    refund: Mapped[int | None] = mapped_column(Amount)
    settled_at: Mapped[int | None] = mapped_column(BigInteger)
    settled_block: Mapped[int | None] = mapped_column(BigInteger)
    __table_args__ = (
        CheckConstraint("status IN ('open', 'settled', 'refunded')", name="status"),
        CheckConstraint("outcome IS NULL OR outcome IN ('majority', 'no_majority')", name="outcome"),
        Index(None, "consumer", "opened_at"),
        Index(None, "status", "opened_at"),
    )


class JobSlot(Base):
    """The provider currently in slot 0..2 of a job and the price the job locked for it."""

    __tablename__ = "job_providers"
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    provider: Mapped[str] = mapped_column(ADDRESS)
    price: Mapped[int] = mapped_column(Amount)
    __table_args__ = (
        CheckConstraint("idx BETWEEN 0 AND 2", name="idx"),
        Index(None, "provider", "job_id"),
    )


class Replacement(Base):
    """ProviderReplaced: the consumer swapped out a provider that failed, refused or stalled."""

    __tablename__ = "replacements"
    id: Mapped[int] = mapped_column(_id_type(), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(SmallInteger)
    old_provider: Mapped[str] = mapped_column(ADDRESS, index=True)
    new_provider: Mapped[str] = mapped_column(ADDRESS)
    price: Mapped[int] = mapped_column(Amount)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_time: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(HASH)
    log_index: Mapped[int] = mapped_column(Integer)
    __table_args__ = (UniqueConstraint("tx_hash", "log_index"),)


class Result(Base):
    """One provider's result in one job: commitment and reveal (fallback path), then the outcome."""

    __tablename__ = "results"
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    provider: Mapped[str] = mapped_column(ADDRESS)
    commitment: Mapped[str | None] = mapped_column(HASH)
    revealed: Mapped[bool] = mapped_column(Boolean, default=False)
    output_hash: Mapped[str | None] = mapped_column(HASH)
    token_count: Mapped[int | None] = mapped_column(BigInteger)
    paid: Mapped[int | None] = mapped_column(Amount)
    #: First-token latency this node measured for this job (local, from observations).
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str | None] = mapped_column(String(8))
    settled_at: Mapped[int | None] = mapped_column(BigInteger)
    __table_args__ = (
        CheckConstraint("idx BETWEEN 0 AND 2", name="idx"),
        CheckConstraint("outcome IS NULL OR outcome IN ('agreed', 'dissent', 'missing', 'slashed')", name="outcome"),
        Index(None, "provider", "settled_at"),
    )


class Payment(Base):
    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(_id_type(), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(ADDRESS)
    amount: Mapped[int] = mapped_column(Amount)
    token_count: Mapped[int] = mapped_column(BigInteger)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_time: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(HASH)
    log_index: Mapped[int] = mapped_column(Integer)
    # One JobSettled log pays up to three distinct providers.
    __table_args__ = (
        UniqueConstraint("tx_hash", "log_index", "provider"),
        Index(None, "provider", "block_time"),
    )


class Refund(Base):
    """The part of a job's escrow credited back to its consumer at settlement."""

    __tablename__ = "refunds"
    id: Mapped[int] = mapped_column(_id_type(), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), index=True)
    consumer: Mapped[str] = mapped_column(ADDRESS, index=True)
    amount: Mapped[int] = mapped_column(Amount)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_time: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(HASH)
    log_index: Mapped[int] = mapped_column(Integer)
    __table_args__ = (UniqueConstraint("tx_hash", "log_index"),)


class Slash(Base):
    __tablename__ = "slashes"
    id: Mapped[int] = mapped_column(_id_type(), primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(ADDRESS)
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), index=True)
    amount: Mapped[int] = mapped_column(Amount)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_time: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(HASH)
    log_index: Mapped[int] = mapped_column(Integer)
    __table_args__ = (
        UniqueConstraint("tx_hash", "log_index"),
        Index(None, "provider", "block_number"),
    )


class IndexerCursor(Base):
    """The indexer's single cursor row: which chain, and the last block fully indexed."""

    __tablename__ = "indexer_cursor"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    genesis_hash: Mapped[str] = mapped_column(HASH)
    token_address: Mapped[str] = mapped_column(ADDRESS)
    registry_address: Mapped[str] = mapped_column(ADDRESS)
    market_address: Mapped[str] = mapped_column(ADDRESS)
    min_job_lock: Mapped[int] = mapped_column(Amount)
    collateral_ratio: Mapped[int] = mapped_column(BigInteger)
    start_block: Mapped[int] = mapped_column(BigInteger)
    last_block: Mapped[int] = mapped_column(BigInteger)
    last_block_hash: Mapped[str] = mapped_column(HASH)
    updated_at: Mapped[float] = mapped_column(Double)
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


# ------------------------------------------------------------------------------ local facts

class Manifest(Base):
    """A provider's manifest as fetched over libp2p (checked against the on-chain hash by the caller)."""

    __tablename__ = "manifests"
    provider: Mapped[str] = mapped_column(ADDRESS, primary_key=True)
    manifest_hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    peer_id: Mapped[str] = mapped_column(String(128), index=True)
    multiaddrs: Mapped[list[str]] = mapped_column(JSON)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    fetched_at: Mapped[float] = mapped_column(Double)


class Peer(Base):
    __tablename__ = "peers"
    peer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    address: Mapped[str | None] = mapped_column(ADDRESS, index=True)
    first_seen: Mapped[float] = mapped_column(Double)
    last_seen: Mapped[float] = mapped_column(Double)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[float | None] = mapped_column(Double)


class Observation(Base):
    """What this node saw of a provider off-chain: failures to connect, timeouts, latency."""

    __tablename__ = "observations"
    id: Mapped[int] = mapped_column(_id_type(), primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(ADDRESS)
    kind: Mapped[str] = mapped_column(String(16))
    value_ms: Mapped[float | None] = mapped_column(Double)
    #: Not a foreign key: a node records what it saw before the indexer has seen the job.
    job_id: Mapped[str | None] = mapped_column(HASH, index=True)
    observed_at: Mapped[float] = mapped_column(Double)
    __table_args__ = (
        CheckConstraint("kind IN ('connect_failure', 'timeout', 'first_token')", name="kind"),
        Index(None, "provider", "observed_at"),
    )


class ProviderReputation(Base):
    """Decayed evidence per provider (see ledger/reputation.py) and the last score computed from it.

    Counters are kept as of `ref_time`; each decays by 2^(-dt/half_life_s), so adding an event or
    reading at a later time costs O(1) per provider, whatever the length of its history.
    """

    __tablename__ = "reputation"
    provider: Mapped[str] = mapped_column(ADDRESS, primary_key=True)
    half_life_s: Mapped[float] = mapped_column(Double)
    ref_time: Mapped[float] = mapped_column(Double)
    agreed: Mapped[float] = mapped_column(Double, default=0.0)
    dissent: Mapped[float] = mapped_column(Double, default=0.0)
    slashed: Mapped[float] = mapped_column(Double, default=0.0)
    missing: Mapped[float] = mapped_column(Double, default=0.0)
    replaced: Mapped[float] = mapped_column(Double, default=0.0)
    timeouts: Mapped[float] = mapped_column(Double, default=0.0)
    connect_failures: Mapped[float] = mapped_column(Double, default=0.0)
    latency_sum: Mapped[float] = mapped_column(Double, default=0.0)
    latency_weight: Mapped[float] = mapped_column(Double, default=0.0)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    score: Mapped[float | None] = mapped_column(Double)
    scored_at: Mapped[float | None] = mapped_column(Double)


#: Tables whose rows come from the chain: `reset_chain_data` empties them (children first).
CHAIN_TABLES = (
    "payments", "refunds", "slashes", "replacements", "results", "job_providers", "jobs",
    "providers", "chain_events", "indexer_cursor",
)
