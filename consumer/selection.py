"""The consumer's memory: its ledger (the chain's facts, indexed, plus what it observed of peers)
and the reputation that orders providers for the next job (docs/LEDGER.md has the formula).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from consumer.discovery import Offer
from ledger import Ledger, Reputation, open_ledger
from ledger.indexer import Indexer
from mesh.chain import Chain
from mesh.errors import LedgerError

log = logging.getLogger("meshmarket.consumer")

#: Asker's observation kinds -> the ledger's.
_KINDS = {"connect_failure": "connect_failure", "timeout": "timeout", "failure": "timeout",
          "first_token_ms": "first_token"}


class Selector:
    def __init__(self, chain: Chain, ledger: Ledger) -> None:
        self.chain = chain
        self.ledger = ledger
        self.reputation = Reputation(ledger)
        self.synced = False

    @classmethod
    def open(cls, chain: Chain, url: str | None = None, on_warning=None) -> Selector:
        sel = cls(chain, open_ledger(url))
        try:
            sel.sync()
        except LedgerError as exc:
            # A ledger indexed from another chain (a restarted local Anvil): rank by price this
            # time rather than refuse to answer; the message says how to start afresh.
            (on_warning or log.warning)(f"reputation unavailable: {exc}")
        return sel

    def sync(self) -> None:
        Indexer(self.ledger, self.chain).sync()
        self.synced = True

    def rank(self, offers: Sequence[Offer]) -> list[Offer]:
        by_price = sorted(offers, key=lambda o: (o.price, o.address))
        if not self.synced:
            return by_price
        by_address = {o.address: o for o in offers}
        scores = self.reputation.scores(list(by_address), time.time())
        if all(s.weight == 0 for s in scores.values()):
            return by_price  # nothing is known of anyone yet: cheapest first, deterministically
        ranked = self.reputation.rank_providers(list(by_address), {a: o.price for a, o in by_address.items()}, time.time())
        return [by_address[r.provider] for r in ranked]

    def observe(self, provider: str, kind: str, value: float | None) -> None:
        mapped = _KINDS.get(kind)
        if mapped is None:
            return
        try:
            self.ledger.record_observation(provider, mapped, value if mapped == "first_token" else None)
        except LedgerError as exc:
            log.warning("could not record an observation: %s", exc)

    def scores(self) -> dict[str, float]:
        return {p: s.score for p, s in self.reputation.scores(None, time.time()).items()}

    def close(self) -> None:
        self.ledger.close()
