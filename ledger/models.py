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
    #: Its pool's group (0x00..00: the open market), from its last registration.
    group_id: Mapped[str | None] = mapped_column(HASH)
    manifest_hash: Mapped[str | None] = mapped_column(HASH)
    price: Mapped[int | None] = mapped_column(Amount)
    #: The libp2p multiaddr (…/p2p/<peer id>) the provider announced when it last registered.
    endpoint: Mapped[str | None] = mapped_column(String(256))
    stake: Mapped[int] = mapped_column(Amount, default=0)
    #: Mirrors the registry's lock: the locks of its seats in contested jobs (JobContested.locks).
    locked: Mapped[int] = mapped_column(Amount, default=0)
    thawing: Mapped[int] = mapped_column(Amount, default=0)
    thaw_ready_at: Mapped[int | None] = mapped_column(BigInteger)
    owed: Mapped[int] = mapped_column(Amount, default=0)
    #: Everything credited to its earnings (seat pay and jury shares); jury_earned is the jury part.
    earned: Mapped[int] = mapped_column(Amount, default=0)
    jury_earned: Mapped[int] = mapped_column(Amount, default=0)
    withdrawn: Mapped[int] = mapped_column(Amount, default=0)
    slashed: Mapped[int] = mapped_column(Amount, default=0)
    #: Seats drawn, juries sat on.
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    jury_duties: Mapped[int] = mapped_column(BigInteger, default=0)
    registered_at: Mapped[int | None] = mapped_column(BigInteger)
    first_block: Mapped[int] = mapped_column(BigInteger)
    last_block: Mapped[int] = mapped_column(BigInteger)
    # Discovery asks "who is in this pool now, and at what price".
    __table_args__ = (Index(None, "model_hash", "group_id", "registered", "price"),)


class Job(Base):
    """A job as its market events describe it (JobMarket.Job, then its settlement)."""

    __tablename__ = "jobs"
    job_id: Mapped[str] = mapped_column(HASH, primary_key=True)
    consumer: Mapped[str] = mapped_column(ADDRESS)
    #: The consumer's ring slot (0..15) that held it.
    slot: Mapped[int] = mapped_column(SmallInteger)
    model_hash: Mapped[str] = mapped_column(HASH, index=True)
    group_id: Mapped[str] = mapped_column(HASH)
    prompt_hash: Mapped[str] = mapped_column(HASH)
    max_tokens: Mapped[int] = mapped_column(BigInteger)
    price_cap: Mapped[int] = mapped_column(Amount)
    #: JobOpened's block (the job's openBlock) and its time.
    open_block: Mapped[int] = mapped_column(BigInteger)
    opened_at: Mapped[int] = mapped_column(BigInteger, index=True)
    drawn_at: Mapped[int | None] = mapped_column(BigInteger)
    seed: Mapped[str | None] = mapped_column(HASH)
    seat_count: Mapped[int] = mapped_column(SmallInteger, default=0)
    #: What it holds in the vault: maxTokens * priceCap * (max(3, seats) + 1), 0 before the draw.
    escrow: Mapped[int] = mapped_column(Amount, default=0)
    status: Mapped[str] = mapped_column(String(10))
    outcome: Mapped[str | None] = mapped_column(String(12))
    #: The agreed or provisional output, when an event carried it (a contest, or reveals).
    output_hash: Mapped[str | None] = mapped_column(HASH)
    #: Bit sets of seats: valid results (JobSettled), the provisional majority and the seats
    #: slashed before any jury (JobContested), the seats slashed in the end (JobSettled).
    present: Mapped[int | None] = mapped_column(SmallInteger)
    provisional: Mapped[int | None] = mapped_column(SmallInteger)
    lied: Mapped[int | None] = mapped_column(SmallInteger)
    slash_mask: Mapped[int | None] = mapped_column(SmallInteger)
    contested_at: Mapped[int | None] = mapped_column(BigInteger)
    refund: Mapped[int | None] = mapped_column(Amount)
    settled_at: Mapped[int | None] = mapped_column(BigInteger)
    settled_block: Mapped[int | None] = mapped_column(BigInteger)
    #: This node was its consumer (local_accounts, or it recorded an observation of the job).
    local: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (
        CheckConstraint("status IN ('open', 'drawn', 'contested', 'disputed', 'settled', 'refunded')", name="status"),
        CheckConstraint("outcome IS NULL OR outcome IN ('agreed', 'provisional', 'judged', 'refunded')",
                        name="outcome"),
        CheckConstraint("slot BETWEEN 0 AND 15", name="slot"),
        Index(None, "consumer", "opened_at"),
        Index(None, "status", "opened_at"),
    )


class Seat(Base):
    """One seat of a job: the drawn provider and its price, its claim (commit, reveal, contest),
    its evidence before a jury, and its outcome, pay and reputation weight."""

    __tablename__ = "seats"
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    seat: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    provider: Mapped[str] = mapped_column(ADDRESS)
    price: Mapped[int] = mapped_column(Amount)
    added: Mapped[bool] = mapped_column(Boolean, default=False)
    commitment: Mapped[str | None] = mapped_column(HASH)
    revealed: Mapped[bool] = mapped_column(Boolean, default=False)
    output_hash: Mapped[str | None] = mapped_column(HASH)
    token_count: Mapped[int | None] = mapped_column(BigInteger)
    #: Stake locked for it while the job was contested (JobContested.locks).
    locked: Mapped[int] = mapped_column(Amount, default=0)
    evidence_posted: Mapped[bool] = mapped_column(Boolean, default=False)
    text_hash: Mapped[str | None] = mapped_column(HASH)
    #: The chain shows it had a result: it committed, or a result of it was contested or settled.
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str | None] = mapped_column(String(12))
    paid: Mapped[int | None] = mapped_column(Amount)
    #: Reputation evidence its outcome was worth (ledger/outcomes.py), decided when it was indexed.
    weight: Mapped[float] = mapped_column(Double, default=0.0)
    #: First-token latency this node measured for this seat (local, from observations).
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    settled_at: Mapped[int | None] = mapped_column(BigInteger)
    __table_args__ = (
        CheckConstraint("seat BETWEEN 0 AND 4", name="seat"),
        CheckConstraint("outcome IS NULL OR outcome IN ('agreed', 'provisional', 'minority', 'unconfirmed', 'passed', "
                        "'soft_fail', 'hard_fail', 'slashed', 'missing')", name="outcome"),
        Index(None, "provider", "settled_at"),
        Index(None, "provider", "job_id"),
    )


class Dispute(Base):
    """A contested job's dispute: who posted the bond, the jury and how it was paid."""

    __tablename__ = "disputes"
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    disputer: Mapped[str] = mapped_column(ADDRESS, index=True)
    bond: Mapped[int] = mapped_column(Amount)
    #: keccak256 of the request it posted (the job's promptHash); the bytes stay in chain_events.
    request_hash: Mapped[str] = mapped_column(HASH)
    opened_block: Mapped[int] = mapped_column(BigInteger)
    opened_at: Mapped[int] = mapped_column(BigInteger)
    jury_at: Mapped[int | None] = mapped_column(BigInteger)
    void: Mapped[bool] = mapped_column(Boolean, default=False)
    share: Mapped[int | None] = mapped_column(Amount)
    bond_refund: Mapped[int | None] = mapped_column(Amount)


class Juror(Base):
    """A juror drawn for a dispute: whether it committed and revealed, its votes, its pay."""

    __tablename__ = "jurors"
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    juror: Mapped[str] = mapped_column(ADDRESS)
    committed: Mapped[bool] = mapped_column(Boolean, default=False)
    revealed: Mapped[bool] = mapped_column(Boolean, default=False)
    verdicts: Mapped[int | None] = mapped_column(Integer)
    paid: Mapped[int | None] = mapped_column(Amount)
    __table_args__ = (
        CheckConstraint("idx BETWEEN 0 AND 2", name="idx"),
        Index(None, "juror", "job_id"),
    )


class Payment(Base):
    """Earnings credited to a provider: a seat's pay (JobSettled) or a juror's share (JuryPaid)."""

    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(_id_type(), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(ADDRESS)
    kind: Mapped[str] = mapped_column(String(4))
    amount: Mapped[int] = mapped_column(Amount)
    token_count: Mapped[int | None] = mapped_column(BigInteger)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_time: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(HASH)
    log_index: Mapped[int] = mapped_column(Integer)
    # One JobSettled log pays up to five distinct seats, one JuryPaid up to three jurors.
    __table_args__ = (
        CheckConstraint("kind IN ('seat', 'jury')", name="kind"),
        UniqueConstraint("tx_hash", "log_index", "provider"),
        Index(None, "provider", "block_time"),
    )


class Refund(Base):
    """Credit returned at a job's close: the unspent escrow to its consumer (JobSettled), or a
    dispute bond to its disputer (JuryPaid)."""

    __tablename__ = "refunds"
    id: Mapped[int] = mapped_column(_id_type(), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(HASH, ForeignKey("jobs.job_id", ondelete="CASCADE"), index=True)
    consumer: Mapped[str] = mapped_column(ADDRESS, index=True)
    kind: Mapped[str] = mapped_column(String(6))
    amount: Mapped[int] = mapped_column(Amount)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_time: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(HASH)
    log_index: Mapped[int] = mapped_column(Integer)
    __table_args__ = (
        CheckConstraint("kind IN ('escrow', 'bond')", name="kind"),
        UniqueConstraint("tx_hash", "log_index"),
    )


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
    max_lock_share: Mapped[int] = mapped_column(BigInteger)
    weight_cap: Mapped[int] = mapped_column(Amount)
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


class LocalAccount(Base):
    """This node's own consumer addresses: their jobs are local (their committees anchor reputation)."""

    __tablename__ = "local_accounts"
    address: Mapped[str] = mapped_column(ADDRESS, primary_key=True)
    added_at: Mapped[float] = mapped_column(Double)


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
    passed: Mapped[float] = mapped_column(Double, default=0.0)
    slashed: Mapped[float] = mapped_column(Double, default=0.0)
    failed: Mapped[float] = mapped_column(Double, default=0.0)
    minority: Mapped[float] = mapped_column(Double, default=0.0)
    missing: Mapped[float] = mapped_column(Double, default=0.0)
    timeouts: Mapped[float] = mapped_column(Double, default=0.0)
    connect_failures: Mapped[float] = mapped_column(Double, default=0.0)
    latency_sum: Mapped[float] = mapped_column(Double, default=0.0)
    latency_weight: Mapped[float] = mapped_column(Double, default=0.0)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    score: Mapped[float | None] = mapped_column(Double)
    scored_at: Mapped[float | None] = mapped_column(Double)


#: Tables whose rows come from the chain: `reset_chain_data` empties them (children first).
CHAIN_TABLES = (
    "payments", "refunds", "slashes", "jurors", "disputes", "seats", "jobs", "providers", "chain_events",
    "indexer_cursor",
)
