"""How a batch of decoded chain events becomes rows (`BatchWriter`), for `SqlLedger.apply_batch`.

A batch is applied in memory over the rows it touches (read in bulk first), then written with bulk
INSERTs and UPDATEs; the caller moves the cursor in the same transaction. The rules mirror the
contracts (docs/LEDGER.md, "From events to rows"):
  - a provider's stake, thawing, earnings and locks follow the registry's events; stake is locked
    only while a job is contested (JobContested.locks), and released when it settles;
  - a job's escrow is maxTokens * priceCap * (max(3, seats) + 1) once drawn (JobMarket._held);
  - each seat's outcome and its reputation evidence follow ledger/outcomes.py, decided when the
    job's JobSettled is indexed, with the evidence this ledger holds at that block's time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from eth_utils import keccak
from sqlalchemy import insert, select

from meshmarket.ledger.evidence import Evidence
from meshmarket.ledger.models import (
    Dispute,
    EventLog,
    Job,
    Juror,
    LocalAccount,
    Observation,
    Payment,
    Provider,
    Refund,
    Seat,
    Slash,
)
from meshmarket.ledger.outcomes import JOB_OUTCOMES, Settlement, bit, evidence_of, seat_outcomes, tally, vouchers
from meshmarket.ledger.records import ChainEvent, RegistryParams
from meshmarket.ledger.rows import Rows, chunks, lock_evidence, save_evidence
from meshmarket.mesh.errors import LedgerError

ZERO_ADDRESS = "0x" + "00" * 20


def _seat_row(job_id: str, idx: int, provider: str, price: int, added: bool) -> dict[str, Any]:
    return dict(job_id=job_id, seat=idx, provider=provider, price=price, added=added, commitment=None, revealed=False,
                output_hash=None, token_count=None, locked=0, evidence_posted=False, text_hash=None, delivered=False,
                outcome=None, paid=None, weight=0.0, latency_ms=None, settled_at=None)


class BatchWriter:
    """Applies one batch of chain events (in chain order) to the rows they change."""

    def __init__(self, s: Any, params: RegistryParams, half_life_s: float) -> None:
        self.s = s
        self.params = params
        self.half_life_s = half_life_s
        self.providers = Rows(s, Provider, ["address"])
        self.jobs = Rows(s, Job, ["job_id"])
        self.seats = Rows(s, Seat, ["job_id", "seat"], per_job=5)
        self.disputes = Rows(s, Dispute, ["job_id"])
        self.jurors = Rows(s, Juror, ["job_id", "idx"], per_job=3)
        self.evidence: dict[str, Evidence] = {}
        self.loaded_jobs: set[str] = set()
        self.local_accounts: set[str] = set()
        self.observed_jobs: set[str] = set()
        #: Seats newly known to have had a result: this node's timeouts for them are taken back.
        self.delivered: set[tuple[str, str]] = set()
        self.inserts: dict[type, list[dict[str, Any]]] = defaultdict(list)

    # -- row access

    def provider(self, address: str, ev: ChainEvent) -> dict[str, Any]:
        row = self.providers.get((address,))
        if row is None:
            row = self.providers.add(dict(
                address=address, registered=False, model_hash=None, group_id=None, manifest_hash=None, price=None,
                endpoint=None, stake=0, locked=0, thawing=0, thaw_ready_at=None, owed=0, earned=0, jury_earned=0,
                withdrawn=0, slashed=0, jobs=0, jury_duties=0, registered_at=None, first_block=ev.block_number,
                last_block=ev.block_number,
            ))
        return row

    def bump(self, address: str, ev: ChainEvent, **deltas: int) -> dict[str, Any]:
        row = self.provider(address, ev)
        self.providers.set(row, last_block=ev.block_number, **{k: row[k] + v for k, v in deltas.items()})
        return row

    def job(self, job_id: str) -> dict[str, Any]:
        row = self.jobs.get((job_id,))
        if row is None:
            raise LedgerError(f"the chain refers to job {job_id}, which this ledger never saw opened",
                              "the ledger is incomplete: run `mesh ledger sync --reset`")
        if job_id not in self.loaded_jobs:
            self.loaded_jobs.add(job_id)
            self.seats.load_jobs([job_id])
            self.jurors.load_jobs([job_id])
            self.disputes.get((job_id,))
        return row

    def seat(self, job_id: str, idx: int) -> dict[str, Any]:
        self.job(job_id)
        row = self.seats.get((job_id, idx))
        if row is None:
            raise LedgerError(f"the chain refers to seat {idx} of job {job_id}, which this ledger never saw drawn",
                              "the ledger is incomplete: run `mesh ledger sync --reset`")
        return row

    def dispute(self, job_id: str) -> dict[str, Any]:
        self.job(job_id)
        row = self.disputes.get((job_id,))
        if row is None:
            raise LedgerError(f"the chain refers to a dispute of job {job_id}, which this ledger never saw opened",
                              "the ledger is incomplete: run `mesh ledger sync --reset`")
        return row

    def ev_of(self, provider: str) -> Evidence:
        if provider not in self.evidence:
            self.evidence.update(lock_evidence(self.s, [provider], self.half_life_s))
        return self.evidence[provider]

    def add_evidence(self, provider: str, at: float, **amounts: float) -> Evidence:
        e = self.ev_of(provider)
        e.add(float(at), **amounts)
        return e

    def mark_delivered(self, seat: dict[str, Any]) -> None:
        if not seat["delivered"]:
            self.seats.set(seat, delivered=True)
            self.delivered.add((seat["job_id"], seat["provider"]))

    def _log(self, ev: ChainEvent) -> dict[str, Any]:
        return dict(block_number=ev.block_number, block_time=ev.block_time, tx_hash=ev.tx_hash, log_index=ev.log_index)

    # -- the batch

    def prefetch(self, events: Sequence[ChainEvent]) -> None:
        """Read every provider, job, seat, juror and evidence row the batch will touch, in bulk."""
        addresses: set[str] = set()
        job_ids: set[str] = set()
        opened: set[str] = set()
        for ev in events:
            a = ev.args
            for k in ("provider", "juror"):
                if k in a:
                    addresses.add(a[k])
            for k in ("seats", "jurors"):
                addresses.update(x for x in a.get(k, ()) if x != ZERO_ADDRESS)
            if ev.name == "JobOpened":
                opened.add(a["jobId"])
            elif "jobId" in a:
                job_ids.add(a["jobId"])
        job_ids -= opened
        self.jobs.preload((j,) for j in job_ids)
        present = sorted(j for j in job_ids if (j,) in self.jobs.rows)
        self.seats.load_jobs(present)
        self.jurors.load_jobs(present)
        self.disputes.preload((j,) for j in present)
        self.loaded_jobs.update(present)
        addresses.update(r["provider"] for r in self.seats.rows.values())
        addresses.update(r["juror"] for r in self.jurors.rows.values())
        self.providers.preload((a,) for a in addresses)
        self.evidence.update(lock_evidence(self.s, addresses - set(self.evidence), self.half_life_s))
        self.local_accounts = set(self.s.scalars(select(LocalAccount.address)))
        for chunk in chunks(sorted(opened)):
            q = select(Observation.job_id).where(Observation.job_id.in_(chunk)).distinct()
            self.observed_jobs.update(self.s.scalars(q))

    def apply(self, events: Sequence[ChainEvent]) -> None:
        self.prefetch(events)
        for ev in events:
            self.inserts[EventLog].append(dict(
                block_number=ev.block_number, block_hash=ev.block_hash, block_time=ev.block_time, tx_hash=ev.tx_hash,
                log_index=ev.log_index, contract=ev.contract, name=ev.name, args=dict(ev.args),
            ))
            handler = getattr(self, "on_" + ev.name, None)
            if handler is not None:
                handler(ev, ev.args)

    # -- registry

    def on_ProviderRegistered(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        row = self.provider(a["provider"], ev)
        self.providers.set(row, registered=True, model_hash=a["modelHash"], group_id=a["group"],
                           manifest_hash=a["manifestHash"], price=a["price"], endpoint=a.get("endpoint") or None,
                           registered_at=row["registered_at"] or ev.block_time, last_block=ev.block_number)

    def on_ProviderDeregistered(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        # The listing is gone on-chain; model, group and manifest hash stay as "last offered".
        self.providers.set(self.provider(a["provider"], ev), registered=False, last_block=ev.block_number)

    def on_Staked(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        self.bump(a["provider"], ev, stake=a["amount"])

    def on_UnstakeRequested(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        row = self.bump(a["provider"], ev, stake=-a["amount"], thawing=a["amount"])
        self.providers.set(row, thaw_ready_at=a["readyAt"])

    def on_StakeWithdrawn(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        row = self.bump(a["provider"], ev, thawing=-a["amount"])
        if row["thawing"] == 0:
            self.providers.set(row, thaw_ready_at=None)

    def on_ThawReclaimed(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        # Thawing stake taken back into stake to back a contested seat's lock (then locked by the
        # JobContested that follows in the same transaction).
        self.bump(a["provider"], ev, stake=a["amount"], thawing=-a["amount"])

    def on_EarningsWithdrawn(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        self.bump(a["provider"], ev, owed=-a["amount"], withdrawn=a["amount"])

    def on_Slashed(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        # The lock it burns is released by JobSettled in the same transaction (logged after it);
        # the outcome and its reputation weight come from JobSettled too.
        self.job(a["jobId"])
        self.bump(a["provider"], ev, stake=-a["amount"], slashed=a["amount"])
        self.inserts[Slash].append(dict(provider=a["provider"], job_id=a["jobId"], amount=a["amount"], **self._log(ev)))

    # -- market: a job

    def on_JobOpened(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        job_id = a["jobId"]
        local = a["consumer"] in self.local_accounts or job_id in self.observed_jobs
        self.jobs.add(dict(
            job_id=job_id, consumer=a["consumer"], slot=a["slot"], model_hash=a["modelHash"], group_id=a["group"],
            prompt_hash=a["promptHash"], max_tokens=a["maxTokens"], price_cap=a["priceCap"],
            open_block=ev.block_number, opened_at=ev.block_time, drawn_at=None, seed=None, seat_count=0, escrow=0,
            status="open", outcome=None, output_hash=None, present=None, provisional=None, lied=None, slash_mask=None,
            contested_at=None, refund=None, settled_at=None, settled_block=None, local=local,
        ))
        self.loaded_jobs.add(job_id)
        self.seats.known_absent(job_id)
        self.jurors.known_absent(job_id)
        self.disputes.missing.add((job_id,))

    def on_SeatsDrawn(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        job = self.job(a["jobId"])
        n = 0
        for provider, price in zip(a["seats"], a["prices"]):
            if provider == ZERO_ADDRESS:
                continue
            self.seats.add(_seat_row(job["job_id"], n, provider, price, False))
            self.bump(provider, ev, jobs=1)
            n += 1
        share = job["max_tokens"] * job["price_cap"]
        self.jobs.set(job, status="drawn", drawn_at=a["drawnAt"], seed=a["seed"], seat_count=n,
                      escrow=share * (max(3, n) + 1))

    def on_SeatAdded(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        job = self.job(a["jobId"])
        self.seats.add(_seat_row(job["job_id"], a["seat"], a["provider"], a["price"], True))
        self.bump(a["provider"], ev, jobs=1)
        n = job["seat_count"] + 1
        self.jobs.set(job, seat_count=n, escrow=job["max_tokens"] * job["price_cap"] * (max(3, n) + 1))

    def on_ResultCommitted(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        seat = self.seat(a["jobId"], a["seat"])
        self.seats.set(seat, commitment=a["commitment"])
        self.mark_delivered(seat)

    def on_ResultRevealed(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        seat = self.seat(a["jobId"], a["seat"])
        self.seats.set(seat, revealed=True, output_hash=a["outputHash"], token_count=a["tokenCount"])

    def on_JobContested(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        job = self.job(a["jobId"])
        c = a["contest"]
        output = None
        for seat in self.seats.of_job(job["job_id"]):
            i = seat["seat"]
            if bit(c["present"] | c["slashed"], i):
                self.seats.set(seat, output_hash=c["outputs"][i], token_count=c["counts"][i], locked=c["locks"][i])
                self.mark_delivered(seat)
                if c["locks"][i]:
                    self.bump(seat["provider"], ev, locked=c["locks"][i])
                if bit(c["provisional"], i):
                    output = c["outputs"][i]
        self.jobs.set(job, status="contested", contested_at=c["contestedAt"], present=c["present"],
                      provisional=c["provisional"], lied=c["slashed"], output_hash=output)

    # -- market: the court

    def on_DisputeOpened(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        job = self.job(a["jobId"])
        request = bytes.fromhex(a["request"][2:])
        self.disputes.add(dict(job_id=job["job_id"], disputer=a["disputer"], bond=a["bond"],
                               request_hash="0x" + keccak(request).hex(), opened_block=ev.block_number,
                               opened_at=ev.block_time, jury_at=None, void=False, share=None, bond_refund=None))
        self.jobs.set(job, status="disputed")

    def on_JuryDrawn(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        d = self.dispute(a["jobId"])
        drawn = [(i, j) for i, j in enumerate(a["jurors"]) if j != ZERO_ADDRESS]
        if not drawn:
            self.disputes.set(d, void=True)
            return
        self.disputes.set(d, jury_at=ev.block_time)
        for i, juror in drawn:
            self.jurors.add(dict(job_id=d["job_id"], idx=i, juror=juror, committed=False, revealed=False,
                                 verdicts=None, paid=None))
            self.bump(juror, ev, jury_duties=1)

    def on_EvidencePosted(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        self.seats.set(self.seat(a["jobId"], a["seat"]), evidence_posted=True, text_hash=a["textHash"])

    def juror(self, job_id: str, address: str) -> dict[str, Any]:
        self.job(job_id)
        for row in self.jurors.of_job(job_id):
            if row["juror"] == address:
                return row
        raise LedgerError(f"{address} voted on job {job_id} without being drawn as its juror (as far as this ledger "
                          "knows)", "the ledger is incomplete: run `mesh ledger sync --reset`")

    def on_VoteCommitted(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        self.jurors.set(self.juror(a["jobId"], a["juror"]), committed=True)

    def on_VoteRevealed(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        self.jurors.set(self.juror(a["jobId"], a["juror"]), revealed=True, verdicts=a["verdicts"])

    # -- settlement

    def on_JobSettled(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        job = self.job(a["jobId"])
        job_id = job["job_id"]
        seats = self.seats.of_job(job_id)
        if job["status"] in ("contested", "disputed"):
            for seat in seats:
                if seat["locked"]:
                    self.bump(seat["provider"], ev, locked=-seat["locked"])
        outcome = JOB_OUTCOMES[a["outcome"]]
        settlement = Settlement(outcome, len(seats), a["present"], a["slashMask"], a["paid"], job["provisional"] or 0,
                                [s["output_hash"] for s in seats], self.verdicts(job_id, seats, a["present"]))
        outcomes = seat_outcomes(settlement)
        anchored = self.anchoring(job, seats, outcomes, ev.block_time)
        for seat, o, anchor in zip(seats, outcomes, anchored):
            self.settle_seat(job, seat, o, anchor, a["paid"][seat["seat"]], ev)
        # JobSettled carries no output: an agreed job's is known when its seats revealed it.
        output = next((s["output_hash"] for s, o in zip(seats, outcomes) if o == "agreed" and s["output_hash"]),
                      job["output_hash"])
        self.jobs.set(job, status="refunded" if outcome == "refunded" else "settled", outcome=outcome,
                      present=a["present"], slash_mask=a["slashMask"], refund=a["refund"], settled_at=ev.block_time,
                      settled_block=ev.block_number, output_hash=output)
        if a["refund"]:
            self.inserts[Refund].append(dict(job_id=job_id, consumer=job["consumer"], kind="escrow",
                                             amount=a["refund"], **self._log(ev)))

    def verdicts(self, job_id: str, seats: Sequence[Mapping[str, Any]], present: int) -> list[str | None]:
        jurors = self.jurors.of_job(job_id)
        if not jurors:
            return []
        evidence = sum(1 << s["seat"] for s in seats if s["evidence_posted"])
        return tally([j["verdicts"] if j["revealed"] else None for j in jurors], len(jurors), evidence, present)

    def anchoring(self, job: Mapping[str, Any], seats: Sequence[Mapping[str, Any]], outcomes: Sequence[str],
                  at: int) -> list[bool]:
        """Whether each seat's outcome is anchored (ledger/outcomes.py), decided for every seat before
        any evidence of this job is folded in, so the order of the seats does not matter."""
        if job["local"]:
            return [True] * len(seats)
        votes = [(j["juror"], j["verdicts"] if j["revealed"] else None) for j in self.jurors.of_job(job["job_id"])]
        vouch = vouchers(outcomes, [s["provider"] for s in seats], votes)
        proven = {q: self.ev_of(q).proven(float(at)) for q in {q for v in vouch for q in v}}
        return [any(proven[q] for q in v) for v in vouch]

    def settle_seat(self, job: Mapping[str, Any], seat: dict[str, Any], outcome: str, anchored: bool, paid: int,
                    ev: ChainEvent) -> None:
        present = outcome not in ("missing", "slashed")
        tokens = seat["token_count"]
        if tokens is None and present:
            tokens = paid // seat["price"]  # the fast path pays tokenCount * price and logs only the pay
        counter, amount = evidence_of(outcome, group=job["group_id"], tokens=tokens, paid=paid, anchored=anchored)
        self.seats.set(seat, outcome=outcome, paid=paid, token_count=tokens, weight=amount, settled_at=ev.block_time)
        if outcome != "missing":
            self.mark_delivered(seat)
        provider = seat["provider"]
        if paid:
            self.bump(provider, ev, owed=paid, earned=paid)
            self.inserts[Payment].append(dict(job_id=job["job_id"], provider=provider, kind="seat", amount=paid,
                                              token_count=tokens, **self._log(ev)))
        e = self.add_evidence(provider, ev.block_time, **({counter: amount} if counter and amount else {}))
        e.jobs += 1

    def on_JuryPaid(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        d = self.dispute(a["jobId"])
        share = a["share"]
        paid = {j for j in a["jurors"] if j != ZERO_ADDRESS}
        for row in self.jurors.of_job(d["job_id"]):
            self.jurors.set(row, paid=share if row["juror"] in paid else 0)
        for juror in paid:
            self.bump(juror, ev, owed=share, earned=share, jury_earned=share)
            self.inserts[Payment].append(dict(job_id=d["job_id"], provider=juror, kind="jury", amount=share,
                                              token_count=None, **self._log(ev)))
        self.disputes.set(d, share=share, bond_refund=a["bondRefund"])
        if a["bondRefund"]:
            self.inserts[Refund].append(dict(job_id=d["job_id"], consumer=d["disputer"], kind="bond",
                                             amount=a["bondRefund"], **self._log(ev)))

    # -- write

    def flush(self) -> None:
        self._join_latency()
        self._take_back_timeouts()
        # Parents before children: foreign keys are checked per statement.
        for rows in (self.providers, self.jobs, self.seats, self.disputes, self.jurors):
            rows.flush()
        for model in (Payment, Refund, Slash, EventLog):
            if self.inserts[model]:
                self.s.execute(insert(model.__table__), self.inserts[model])
        save_evidence(self.s, self.evidence.values(), set())

    def _take_back_timeouts(self) -> None:
        """This node's timeouts for a seat that, as the chain now shows, had a result: they were not
        a missing answer (the seat committed, or its result was contested or settled)."""
        if not self.delivered:
            return
        job_ids = sorted({j for j, _ in self.delivered})
        for chunk in chunks(job_ids):
            q = (select(Observation.job_id, Observation.provider, Observation.observed_at)
                 .where(Observation.kind == "timeout", Observation.job_id.in_(chunk)))
            for jid, prov, at in self.s.execute(q):
                if (jid, prov) in self.delivered:
                    self.add_evidence(prov, at, missing=-1.0)

    def _join_latency(self) -> None:
        """Local first-token latencies recorded before the indexer saw the seat."""
        keys = [k for k in self.seats.new if self.seats.rows[k]["latency_ms"] is None]
        if not keys:
            return
        seen: dict[tuple[str, str], float] = {}
        for chunk in chunks(sorted({k[0] for k in keys})):
            q = (select(Observation.job_id, Observation.provider, Observation.value_ms)
                 .where(Observation.kind == "first_token", Observation.job_id.in_(chunk))
                 .order_by(Observation.observed_at))
            for jid, prov, ms in self.s.execute(q):
                seen.setdefault((jid, prov), ms)
        for k in keys:
            row = self.seats.rows[k]
            ms = seen.get((row["job_id"], row["provider"]))
            if ms is not None:
                self.seats.set(row, latency_ms=int(round(ms)))
