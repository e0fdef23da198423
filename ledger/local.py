"""Evidence outside the indexer's batches: this node's own observations, jobs that turn out to be
this node's own, and the rebuild of every provider's evidence from the stored rows.

The rules are the ones the batch writer applies (ledger/outcomes.py, ledger/writer.py), written so
that folding evidence in as it arrives and rebuilding it from the rows give the same counters:
  - a seat's outcome is worth the `weight` stored on its row (decided when it was indexed, or when
    its job became local: `make_local`);
  - this node's `timeout` of a seat in a job is a missing answer unless the chain shows the seat had
    a result (`seats.delivered`); without a job it is a plain timeout.
Everything works in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from meshmarket.ledger.evidence import Evidence
from meshmarket.ledger.models import Job, Observation, ProviderReputation, Seat
from meshmarket.ledger.outcomes import COUNTER_OF, evidence_of
from meshmarket.ledger.rows import chunks, lock_evidence, save_evidence


def observation_evidence(kind: str, value_ms: float | None, job_id: str | None, delivered: bool) -> dict[str, float]:
    """What one observation of this node is worth (see the module docstring)."""
    if kind == "connect_failure":
        return {"connect_failures": 1.0}
    if kind == "timeout":
        if job_id is None:
            return {"timeouts": 1.0}
        return {} if delivered else {"missing": 1.0}
    return {"latency_sum": float(value_ms or 0.0), "latency_weight": 1.0}


def seat_delivered(s: Session, job_id: str, provider: str) -> bool:
    q = select(Seat.delivered).where(Seat.job_id == job_id, Seat.provider == provider, Seat.delivered.is_(True))
    return s.execute(q.limit(1)).scalar() is not None


def make_local(s: Session, job_ids: Iterable[str], half_life_s: float,
               evidence: MutableMapping[str, Evidence]) -> int:
    """Mark jobs as this node's own, and anchor the outcomes of those already settled: their
    committees were drawn for this node's own requests. Returns how many jobs changed; the
    evidence it touched is in `evidence` (saved by the caller)."""
    ids = sorted(set(job_ids))
    groups: dict[str, str] = {}
    for chunk in chunks(ids):
        q = select(Job.job_id, Job.group_id).where(Job.job_id.in_(chunk), Job.local.is_(False))
        groups.update({jid: g for jid, g in s.execute(q)})
    if not groups:
        return 0
    changed = sorted(groups)
    for chunk in chunks(changed):
        s.execute(update(Job).where(Job.job_id.in_(chunk)).values(local=True))
    seats: list[Any] = []
    for chunk in chunks(changed):
        q = select(Seat).where(Seat.job_id.in_(chunk), Seat.outcome.in_(list(COUNTER_OF)), Seat.weight == 0)
        seats.extend(s.scalars(q))
    needed = {seat.provider for seat in seats} - set(evidence)
    evidence.update(lock_evidence(s, needed, half_life_s))
    for seat in seats:
        counter, amount = evidence_of(seat.outcome, group=groups[seat.job_id], tokens=seat.token_count,
                                      paid=seat.paid, anchored=True)
        if counter and amount:
            seat.weight = amount
            evidence[seat.provider].add(float(seat.settled_at), **{counter: amount})
    s.flush()
    return len(changed)


def rebuild(s: Session, half_life_s: float) -> int:
    """Fold every piece of evidence again, oldest first, into fresh counters (every provider that
    had a row keeps one). Returns the number of providers."""
    ev: dict[str, Evidence] = {p: Evidence(p, half_life_s, 0.0) for p in s.scalars(select(ProviderReputation.provider))}
    s.execute(delete(ProviderReputation))
    items: list[tuple[float, str, dict[str, float], int]] = []
    q = select(Seat.provider, Seat.outcome, Seat.weight, Seat.settled_at).where(Seat.outcome.is_not(None))
    for prov, outcome, weight, at in s.execute(q):
        counter = COUNTER_OF.get(outcome)
        items.append((float(at), prov, {counter: weight} if counter and weight else {}, 1))
    delivered = {tuple(r) for r in s.execute(select(Seat.job_id, Seat.provider).where(Seat.delivered.is_(True)))}
    q = select(Observation.provider, Observation.kind, Observation.value_ms, Observation.job_id, Observation.observed_at)
    for prov, kind, ms, jid, at in s.execute(q):
        items.append((float(at), prov, observation_evidence(kind, ms, jid, (jid, prov) in delivered), 0))
    items.sort(key=lambda x: x[0])
    for at, prov, amounts, jobs in items:
        e = ev.get(prov)
        if e is None:
            e = ev[prov] = Evidence(prov, half_life_s, at)
        e.add(at, **amounts)
        e.jobs += jobs
    save_evidence(s, ev.values(), set(ev))
    return len(ev)
