"""The values that cross the ledger's API: decoded chain events in, typed rows out.

Plain frozen dataclasses, never ORM objects, so a caller can keep them after the session that
read them is gone and code outside `ledger/` never depends on SQLAlchemy. Addresses are
checksummed 0x strings, hashes and job ids lowercase 0x-prefixed hex, amounts `int` base units,
chain times unix seconds (`int`, from block timestamps), local times unix seconds (`float`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from collections.abc import Mapping
from typing import Any, Literal

from eth_utils import is_address, to_checksum_address

from meshmarket.ledger.outcomes import JOB_OUTCOMES, JOB_STATUSES, SEAT_OUTCOMES  # noqa: F401 — re-exported
from meshmarket.mesh.config import lock_for

@lru_cache(maxsize=1 << 16)
def checksum(address: str) -> str:
    """EIP-55 form of an address. Cached: a checksum costs a keccak (~0.1 ms), and the same few
    thousand providers come back in every log batch and every ranking."""
    if not isinstance(address, str) or not is_address(address):
        raise ValueError(f"{address!r} is not an Ethereum address")
    return to_checksum_address(address)


#: What a node itself saw of a provider, off-chain (see `Ledger.record_observation`).
ObservationKind = Literal["connect_failure", "timeout", "first_token"]
OBSERVATION_KINDS: tuple[str, ...] = ("connect_failure", "timeout", "first_token")


@dataclass(frozen=True)
class ChainEvent:
    """One decoded log of the registry or the market, with where it sits in the chain."""

    contract: Literal["registry", "market"]
    name: str
    block_number: int
    block_hash: str
    block_time: int
    tx_hash: str
    log_index: int
    #: Decoded arguments by ABI name: addresses checksummed, bytes32 as hex, integers as int.
    args: Mapping[str, Any]


@dataclass(frozen=True)
class ChainIdentity:
    """What makes one chain history different from another: a ledger holds exactly one."""

    chain_id: int
    genesis_hash: str
    token: str
    registry: str
    market: str


@dataclass(frozen=True)
class RegistryParams:
    """The registry's immutables the ledger needs to tell who a job could draw."""

    min_job_lock: int
    collateral_ratio: int
    #: One job may lock at most free stake / max_lock_share: a seat draw skips providers below that.
    max_lock_share: int = 4
    #: Draw weight = min(free stake, weight_cap).
    weight_cap: int = 100_000_000

    def lock_for(self, max_tokens: int, price: int) -> int:
        """ProviderRegistry.lockFor (mesh.config.lock_for)."""
        return lock_for(self.min_job_lock, self.collateral_ratio, max_tokens, price)

    def can_back(self, max_tokens: int, price: int, free_stake: int) -> bool:
        """ProviderRegistry._eligible's stake test: a seat's lock is at most free / maxLockShare."""
        return self.lock_for(max_tokens, price) * self.max_lock_share <= free_stake


@dataclass(frozen=True)
class Cursor:
    """How far the indexer got, on which chain; committed with the rows of each batch."""

    identity: ChainIdentity
    params: RegistryParams
    start_block: int
    last_block: int
    last_block_hash: str
    updated_at: float


@dataclass(frozen=True)
class ProviderRow:
    """A provider as the ledger last saw it on-chain (stake fields mirror the registry)."""

    address: str
    registered: bool
    model_hash: str | None
    #: Its pool's group: OPEN_MARKET (0x00..00) or a private mesh.
    group: str | None
    manifest_hash: str | None
    price: int | None
    endpoint: str | None
    stake: int
    #: Mirrors the registry: the locks of its seats in contested jobs.
    locked: int
    thawing: int
    thaw_ready_at: int | None
    owed: int
    #: Everything credited to its earnings: seats paid plus jury shares (`jury_earned` of it).
    earned: int
    jury_earned: int
    withdrawn: int
    slashed: int
    #: Seats it was drawn into, and juries it sat on.
    jobs: int
    jury_duties: int
    registered_at: int | None
    last_block: int

    @property
    def free_stake(self) -> int:
        return self.stake - self.locked


@dataclass(frozen=True)
class SeatRow:
    """One seat of a job: who was drawn, what it claimed and what it got."""

    index: int
    provider: str
    price: int
    #: Drawn by addSeat (not among the first three).
    added: bool = False
    outcome: str | None = None
    output_hash: str | None = None
    token_count: int | None = None
    paid: int | None = None
    #: Stake locked for this seat while its job was contested (0 otherwise).
    locked: int = 0
    committed: bool = False
    revealed: bool = False
    evidence_posted: bool = False
    #: Reputation evidence its outcome was worth to this node (ledger/outcomes.py).
    weight: float = 0.0
    latency_ms: int | None = None


#: The v1 name of a job's seat row.
JobProvider = SeatRow


@dataclass(frozen=True)
class JurorRow:
    job_id: str
    index: int
    juror: str
    committed: bool
    revealed: bool
    #: The revealed vote: 2 bits per seat (0 pass, 1 soft fail, 2 hard fail).
    verdicts: int | None
    #: Its share of the jury's pay (0: it did not reveal; None: not resolved yet).
    paid: int | None


@dataclass(frozen=True)
class DisputeRow:
    job_id: str
    disputer: str
    bond: int
    opened_block: int
    opened_at: int
    jury_at: int | None
    #: No juror could be drawn: the provisional outcome stood and the bond returned.
    void: bool
    share: int | None
    bond_refund: int | None
    jurors: tuple[JurorRow, ...] = field(default=())


@dataclass(frozen=True)
class JobRow:
    job_id: str
    consumer: str
    slot: int
    model_hash: str
    group: str
    prompt_hash: str
    max_tokens: int
    price_cap: int
    open_block: int
    opened_at: int
    drawn_at: int | None
    seed: str | None
    #: What the job holds in the vault: maxTokens * priceCap per seat (three at least) plus a jury
    #: reserve of one more share (0 before the draw).
    escrow: int
    status: str
    outcome: str | None
    #: The agreed (or provisional) output hash, when an event carried it.
    output_hash: str | None
    present: int | None
    slash_mask: int | None
    contested_at: int | None
    refund: int | None
    settled_at: int | None
    #: This node's own job (it was the consumer): its agreements anchor reputation.
    local: bool
    seats: tuple[SeatRow, ...] = field(default=())
    dispute: DisputeRow | None = None

    @property
    def paid(self) -> int:
        return sum(p.paid or 0 for p in self.seats)

    @property
    def providers(self) -> tuple[SeatRow, ...]:
        return self.seats


@dataclass(frozen=True)
class EarningsRow:
    provider: str
    jobs_paid: int
    tokens: int
    earned: int
    jury: int
    withdrawn: int
    owed: int
    slashed: int


@dataclass(frozen=True)
class SlashRow:
    provider: str
    job_id: str
    amount: int
    block_number: int
    block_time: int
    tx_hash: str


@dataclass(frozen=True)
class PeerRow:
    peer_id: str
    address: str | None
    first_seen: float
    last_seen: float
    failures: int
    last_failure: float | None


@dataclass(frozen=True)
class ManifestRow:
    provider: str
    manifest_hash: str
    peer_id: str
    multiaddrs: tuple[str, ...]
    body: Mapping[str, Any]
    fetched_at: float


@dataclass(frozen=True)
class BatchResult:
    """What one `apply_batch` did: `applied` new logs (0 when the range was already indexed)."""

    applied: int
    skipped: int
    last_block: int
