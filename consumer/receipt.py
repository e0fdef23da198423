"""What a query produced: per provider slot what it delivered, earned or lost, and the whole
query's agreement, money and timings (printed by `mesh ask`, returned as JSON with --json)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class SlotReport:
    index: int
    provider: str
    price: int
    tokens: int = 0
    paid: int = 0
    slashed: int = 0
    agreed: bool = False
    status: str = ""
    first_token_ms: float = math.nan
    total_ms: float = math.nan
    replaced: list[str] = field(default_factory=list)


@dataclass
class Receipt:
    job_id: bytes
    model_hash: bytes
    agreement: str  # "3/3", "2/3", "none", or "pending" when settlement must wait
    text: str
    slots: list[SlotReport]
    escrow: int
    refund: int
    gas: dict[str, int]
    timings_ms: dict[str, float]
    settled: bool
    #: What was shown while streaming; differs from `text` when that provider failed or was outvoted.
    streamed: str = ""

    @property
    def paid(self) -> int:
        return sum(s.paid for s in self.slots)

    def as_dict(self) -> dict:
        return {
            "job_id": "0x" + self.job_id.hex(), "model_hash": "0x" + self.model_hash.hex(),
            "agreement": self.agreement, "settled": self.settled, "text": self.text,
            "providers": [{"index": s.index, "address": s.provider, "price": s.price, "tokens": s.tokens,
                           "paid": s.paid, "slashed": s.slashed, "agreed": s.agreed, "status": s.status,
                           "first_token_ms": None if math.isnan(s.first_token_ms) else round(s.first_token_ms, 1),
                           "replaced": s.replaced} for s in self.slots],
            "escrow": self.escrow, "paid": self.paid, "refund": self.refund, "gas": self.gas,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }
