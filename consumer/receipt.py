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
    #: Its result is the answer shown (the strict majority's, else the first valid one).
    backs_answer: bool = False


@dataclass
class Receipt:
    job_id: bytes
    model_hash: bytes
    #: "k/n": k equal valid results of the n seats that answered.
    agreement: str
    text: str
    slots: list[SlotReport]
    escrow: int
    refund: int
    gas: dict[str, int]
    timings_ms: dict[str, float]
    settled: bool
    #: What was shown while streaming; differs from `text` when that provider failed or was outvoted.
    streamed: str = ""
    #: "agreed" (paid at once), "contested" (a provisional outcome or a jury decides), "refunded"
    #: (no valid result), or "pending" (a seat did not answer: settles after its claim window).
    outcome: str = ""
    #: Each seat's declared build fingerprint (provider address -> "fp_…", "" if undeclared).
    builds: dict[str, str] = field(default_factory=dict)
    #: The build of the answer's seats when they all declared the same one (OpenAI's system_fingerprint).
    system_fingerprint: str = ""
    #: Why the answer ended: "stop" (the model or a stop string ended it) or "length" (max tokens).
    finish_reason: str = ""
    #: The prompt's length in tokens, as the answer's seat counted it.
    prompt_tokens: int = 0

    @property
    def paid(self) -> int:
        return sum(s.paid for s in self.slots)

    def as_dict(self) -> dict:
        return {
            "job_id": "0x" + self.job_id.hex(), "model_hash": "0x" + self.model_hash.hex(),
            "agreement": self.agreement, "outcome": self.outcome, "settled": self.settled, "text": self.text,
            "system_fingerprint": self.system_fingerprint or None, "finish_reason": self.finish_reason or None,
            "prompt_tokens": self.prompt_tokens,
            "providers": [{"index": s.index, "address": s.provider, "price": s.price, "tokens": s.tokens,
                           "paid": s.paid, "slashed": s.slashed, "agreed": s.agreed, "status": s.status,
                           "build": self.builds.get(s.provider) or None, "backs_answer": s.backs_answer,
                           "first_token_ms": None if math.isnan(s.first_token_ms) else round(s.first_token_ms, 1)}
                          for s in self.slots],
            "escrow": self.escrow, "paid": self.paid, "refund": self.refund, "gas": self.gas,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }
