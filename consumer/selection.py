"""The consumer's memory: its ledger (the chain's facts, indexed, plus what it observed of peers)
and what reputation says about the providers (docs/LEDGER.md has the rules).

In protocol v2 the consumer chooses nobody: the protocol draws a job's seats. Reputation decides
what `mesh models` shows first (`rank`), and, during a query, whether to draw one more seat
(`add_seat`) or to dispute a provisional outcome (`dispute`): both when the evidence doubts the
answer the seats lean to (nobody proven behind it, somebody proven against it).

    sel = Selector.open(chain, url, consumer=address)   # indexes the chain once
    sel.observe(provider, "first_token_ms", 312.0, job_id=job_id)
    sel.add_seat({provider: output_hash_or_None, ...})
    sel.dispute({provider: output_hash_or_None, ...}, paid=[...])
    sel.sync(); sel.scores(); sel.close()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

from meshmarket.consumer.discovery import Offer
from meshmarket.ledger import Ledger, Reputation, doubts, open_ledger
from meshmarket.ledger.indexer import Indexer
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import LedgerError

log = logging.getLogger("meshmarket.consumer")

#: The query's observation kinds -> the ledger's (others, e.g. connect_ms, are not evidence).
_KINDS = {"connect_failure": "connect_failure", "timeout": "timeout", "failure": "timeout",
          "first_token_ms": "first_token", "first_token": "first_token"}
#: A job has at most this many seats (JobMarket.SEATS).
MAX_SEATS = 5


class Selector:
    def __init__(self, chain: Chain, ledger: Ledger) -> None:
        self.chain = chain
        self.ledger = ledger
        self.reputation = Reputation(ledger)
        self.synced = False

    @classmethod
    def open(cls, chain: Chain, url: str | None = None, on_warning=None, consumer: str | None = None) -> Selector:
        """Open the ledger at `url` (default: $MESH_LEDGER_URL or $MESH_HOME) and index the chain.
        `consumer`: this node's own address; its jobs anchor reputation (jobs it observes do too)."""
        sel = cls(chain, open_ledger(url))
        try:
            if consumer is not None:
                sel.ledger.add_local_account(consumer)
            sel.sync()
        except LedgerError as exc:
            # A ledger indexed from another chain (a restarted local Anvil): show providers by
            # price this time rather than refuse to answer; the message says how to start afresh.
            (on_warning or log.warning)(f"reputation unavailable: {exc}")
        return sel

    def sync(self) -> None:
        Indexer(self.ledger, self.chain).sync()
        self.synced = True

    def observe(self, provider: str, kind: str, value: float | None, job_id: bytes | str | None = None) -> None:
        """Record what this node saw of a seat. With `job_id`, the job is this node's own, and a
        timeout in it is a missing answer unless the chain shows the seat had a result."""
        mapped = _KINDS.get(kind)
        if mapped is None:
            return
        try:
            self.ledger.record_observation(provider, mapped, value if mapped == "first_token" else None,
                                           job_id=job_id)
        except LedgerError as exc:
            log.warning("could not record an observation: %s", exc)

    def scores(self) -> dict[str, float]:
        return {p: s.score for p, s in self.reputation.scores(None, time.time()).items()}

    def rank(self, offers: Sequence[Offer]) -> list[Offer]:
        """Offers best first, for display (deterministic for a given second and set of offers)."""
        by_price = sorted(offers, key=lambda o: (o.price, o.address))
        if not self.synced:
            return by_price
        by_address = {o.address: o for o in offers}
        scores = self.reputation.scores(list(by_address), time.time())
        if all(s.weight == 0 for s in scores.values()):
            return by_price  # nothing is known of anyone yet: cheapest first, deterministically
        ranked = self.reputation.rank_providers(list(by_address), {a: o.price for a, o in by_address.items()},
                                                time.time())
        return [by_address[r.provider] for r in ranked]

    def add_seat(self, answers: Mapping[str, bytes | None]) -> bool:
        """Whether to draw one more seat before the delivery deadline, given each seat's answer so
        far (its output hash, None: none yet): when no output has a strict majority of two or more
        (the job would be contested without a provisional majority), or when the evidence doubts the
        leading output. Never beyond five seats."""
        if len(answers) >= MAX_SEATS:
            return False
        lead, others = _leader(answers)
        answered = sum(1 for o in answers.values() if o is not None)
        if len(lead) < 2 or 2 * len(lead) <= answered:
            return True
        return self._doubts(lead, others)

    def dispute(self, answers: Mapping[str, bytes | None], paid: Iterable[str]) -> bool:
        """Whether to dispute a contested job's provisional outcome: the evidence doubts the seats
        it pays (`paid`) against the seats with another answer. With nobody paid there is nothing
        to undo: the consumer's escrow comes back."""
        paid = set(paid)
        if not paid:
            return False
        paid_outputs = {answers.get(p) for p in paid}
        against = [p for p, o in answers.items() if o is not None and p not in paid and o not in paid_outputs]
        return self._doubts(paid, against)

    def _doubts(self, backing: Iterable[str], against: Iterable[str]) -> bool:
        backing, against = list(backing), list(against)
        if not self.synced or not against:
            return False
        return doubts(self.reputation.scores(backing + against, time.time()), backing, against)

    def close(self) -> None:
        self.ledger.close()


def _leader(answers: Mapping[str, bytes | None]) -> tuple[list[str], list[str]]:
    """The seats behind the most common answer (ties: the smallest output hash, for determinism),
    and the seats with another answer."""
    groups: dict[bytes, list[str]] = {}
    for p, o in answers.items():
        if o is not None:
            groups.setdefault(bytes(o), []).append(p)
    if not groups:
        return [], []
    best = min(groups, key=lambda o: (-len(groups[o]), o))
    return groups[best], [p for o, ps in groups.items() if o != best for p in ps]
