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

from mesh.config import lock_for

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

#: A job is `open` until JobSettled: `settled` when a majority agreed, `refunded` when none did.
JobStatus = Literal["open", "settled", "refunded"]
JOB_STATUSES: tuple[str, ...] = ("open", "settled", "refunded")

#: One provider's part in a settled job, derived from JobSettled (see docs/LEDGER.md).
ResultOutcome = Literal["agreed", "dissent", "missing", "slashed"]
RESULT_OUTCOMES: tuple[str, ...] = ("agreed", "dissent", "missing", "slashed")


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
    """The registry's immutables the ledger needs to mirror its stake locks exactly."""

    min_job_lock: int
    collateral_ratio: int

    def lock_for(self, max_tokens: int, price: int) -> int:
        """ProviderRegistry.lockFor (mesh.config.lock_for)."""
        return lock_for(self.min_job_lock, self.collateral_ratio, max_tokens, price)


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
    manifest_hash: str | None
    price: int | None
    endpoint: str | None
    stake: int
    locked: int
    thawing: int
    thaw_ready_at: int | None
    owed: int
    earned: int
    withdrawn: int
    slashed: int
    jobs: int
    registered_at: int | None
    last_block: int

    @property
    def free_stake(self) -> int:
        return self.stake - self.locked


@dataclass(frozen=True)
class JobProvider:
    index: int
    provider: str
    price: int
    outcome: str | None = None
    token_count: int | None = None
    paid: int | None = None
    latency_ms: int | None = None


@dataclass(frozen=True)
class JobRow:
    job_id: str
    consumer: str
    model_hash: str
    prompt_hash: str
    max_tokens: int
    price_cap: int
    opened_at: int
    opened_block: int
    escrow: int
    status: str
    outcome: str | None
    output_hash: str | None
    refund: int | None
    settled_at: int | None
    providers: tuple[JobProvider, ...] = field(default=())

    @property
    def paid(self) -> int:
        return sum(p.paid or 0 for p in self.providers)


@dataclass(frozen=True)
class EarningsRow:
    provider: str
    jobs_paid: int
    tokens: int
    earned: int
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
