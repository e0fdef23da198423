"""What a query reports while it runs: one typed event per thing that happened, in order, to one
sink (consumer.query.Query; `Asker.ask(..., sink=...)`). The CLI prints them, the HTTP gateway
streams and logs them; neither is called back in any other way.

    Drawn             the seats are drawn and the escrow is taken
    ManifestRejected  a seat's manifest does not check out (its build counts as unknown)
    SeatToken         text from a seat, as it streams; `streamed` marks the seat shown as the answer
    SeatRefused       a seat refused the request itself (another seat would too: none is added)
    SeatFailed        a seat failed (unreachable, stalled, died, lied); a seat may be added
    SeatAdded         a seat drawn in place of a failed one
    SeatNotAdded      no seat could be added (the chain refused)
    Delivered         a seat's signed answer arrived and was verified
    Settled           the job closed on-chain: paid, refunded
    Contested         the seats disagree: a provisional outcome, unless a party disputes in time
    Disputed          ... and this query disputed: a jury judges
    DisputeTooSmall   ... and a dispute was asked for, but the job is too small for a jury
    Pending           a seat did not answer: the job settles after its claim window
    SettleFailed      settling failed; the job and its results are in the journal

Events carry data (ids, amounts, chain times), never sentences: how to say them is the caller's.
They are this process's account of one query, not the contracts' logs (mesh/events.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshmarket.mesh.errors import ChainError, ProviderFailed


@dataclass(frozen=True)
class Drawn:
    job_id: bytes
    seats: tuple[str, ...]
    #: What the job holds: every seat's maxTokens x price cap, and the jury reserve (base units).
    escrow: int


@dataclass(frozen=True)
class ManifestRejected:
    provider: str
    why: str


@dataclass(frozen=True)
class SeatToken:
    seat: int
    provider: str
    text: str
    #: This seat is the one whose text is shown while the answer streams (the first to produce a token).
    streamed: bool


@dataclass(frozen=True)
class SeatRefused:
    seat: int
    provider: str
    error: ProviderFailed


@dataclass(frozen=True)
class SeatFailed:
    seat: int
    provider: str
    error: ProviderFailed


@dataclass(frozen=True)
class SeatAdded:
    seat: int
    provider: str


@dataclass(frozen=True)
class SeatNotAdded:
    error: ChainError


@dataclass(frozen=True)
class Delivered:
    seat: int
    provider: str
    tokens: int
    first_token_ms: float
    #: A signed claim of more tokens than the job allows (slashed at settlement).
    lie: bool


@dataclass(frozen=True)
class Settled:
    job_id: bytes
    #: mesh.market.OUTCOMES: "agreed", "refunded", …
    outcome: str
    paid: tuple[int, ...]
    refund: int


@dataclass(frozen=True)
class Contested:
    job_id: bytes
    #: Seconds a party has to dispute before the provisional outcome stands.
    dispute_window: int


@dataclass(frozen=True)
class Disputed:
    job_id: bytes
    bond: int
    #: Seconds the court's phases take before the job can be closed.
    court_time: int


@dataclass(frozen=True)
class DisputeTooSmall:
    job_id: bytes
    jury_fee: int
    min_jury_fee: int


@dataclass(frozen=True)
class Pending:
    job_id: bytes
    missing: tuple[int, ...]
    #: Chain time from which the job can be settled without the missing seats; `now` when said.
    deadline: int
    now: int


@dataclass(frozen=True)
class SettleFailed:
    job_id: bytes
    error: ChainError


QueryEvent = (Drawn | ManifestRejected | SeatToken | SeatRefused | SeatFailed | SeatAdded | SeatNotAdded | Delivered
              | Settled | Contested | Disputed | DisputeTooSmall | Pending | SettleFailed)

#: Where a query's events go: called in order and never concurrently (from the query's trio task,
#: or from the worker thread a chain phase runs in while that task waits for it). It must not block.
EventSink = Callable[[QueryEvent], None]

#: What a query saw of a provider, for the ledger: (address, "first_token_ms" | "failure" |
#: "timeout", value, job id); the job is this node's own (consumer.selection.Selector.observe).
Observer = Callable[[str, str, float | None, bytes], None]


def ignore(event: QueryEvent) -> None:
    """The sink of a caller that renders nothing (it reads the receipt)."""


def observe_nothing(provider: str, kind: str, value: float | None, job_id: bytes) -> None:
    """The observer of a caller without a ledger."""
