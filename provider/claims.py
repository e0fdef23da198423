"""A seat's duties after it answered: get paid for delivered work whatever the consumer does.

For every job it served, the provider keeps (on disk, fsynced: this is money it is owed) what it
signed — job, seat, output hash, token count — and what it may have to show a jury: the text's
hash, the output tokens and the canonical request. A keeper then follows each job on the chain
(its events: seats added, contests, disputes) and acts when the consumer did not:

- open after the delivery window: commit a hidden claim (keyed by job and seat), reveal it after
  the claim window, and finalize (anyone may) once the reveal window is over;
- contested, this seat valid but not in the provisional majority: dispute (a bond; the jury
  checks the outputs, and an honest answer passes), draw the jury if nobody did, publish the
  seat's tokens as evidence during the evidence phase, and resolve once the court is done;
- contested and nobody disputes: resolve after the dispute window;
- closed: drop the claim and report what it was paid.

Normally the consumer settles within seconds and none of this costs a transaction. What to do
when is the seat's policy (`mesh.lifecycle.seat_action`); the keeper executes it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from eth_account.signers.local import LocalAccount

from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import ChainError, ProtocolError
from meshmarket.mesh.files import write_atomic
from meshmarket.mesh.lifecycle import Action, JobState, job_state, seat_action
from meshmarket.mesh.market import MarketClient, commitment
from meshmarket.mesh.protocol import Job

log = logging.getLogger("meshmarket.provider.claims")


@dataclass
class Claim:
    job_id: bytes
    job: Job
    seat: int
    output_hash: bytes
    token_count: int
    text_hash: bytes = b""
    tokens: bytes = b""
    #: The canonical request (keccak256 = the job's promptHash): what a dispute publishes.
    request: bytes = b""
    salt: bytes = field(default_factory=lambda: os.urandom(32))
    committed: bool = False
    revealed: bool = False
    disputed: bool = False

    def to_dict(self) -> dict:
        return {"job_id": "0x" + self.job_id.hex(), "job": self.job.to_wire(), "seat": self.seat,
                "output_hash": "0x" + self.output_hash.hex(), "token_count": self.token_count,
                "text_hash": "0x" + self.text_hash.hex(), "tokens": "0x" + self.tokens.hex(),
                "request": self.request.decode("utf-8"), "salt": "0x" + self.salt.hex(),
                "committed": self.committed, "revealed": self.revealed, "disputed": self.disputed}

    @classmethod
    def from_dict(cls, d: dict) -> Claim:
        return cls(bytes.fromhex(d["job_id"][2:]), Job.parse(d["job"]), int(d["seat"]),
                   bytes.fromhex(d["output_hash"][2:]), int(d["token_count"]), bytes.fromhex(d["text_hash"][2:]),
                   bytes.fromhex(d["tokens"][2:]), d["request"].encode("utf-8"), bytes.fromhex(d["salt"][2:]),
                   bool(d["committed"]), bool(d["revealed"]), bool(d["disputed"]))


class ClaimKeeper:
    """Thread-safe set of served jobs not yet seen closed; `tick()` advances each one."""

    def __init__(self, chain: Chain, account: LocalAccount, on_event: Callable[[str], None] | None = None,
                 path: Path | None = None, dispute: bool = True) -> None:
        self.chain = chain
        self.account = account
        self.mc = MarketClient(chain)
        self.params = chain.deployment.params
        #: Dispute a contest this seat would otherwise lose (it is honest: its answer passes a jury).
        self.dispute = dispute
        self._claims: dict[tuple[bytes, int], Claim] = {}
        self._lock = threading.Lock()
        self.on_event = on_event or (lambda msg: log.info(msg))
        #: Claims are money owed: written durably (salt included: without it a commitment can never
        #: be revealed), so a restarted provider still collects.
        self.path = path
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            entries = json.loads(path.read_text())
        except ValueError as exc:
            # Never dropped silently: the damaged file is kept aside for the operator.
            kept = path.with_suffix(".damaged")
            path.replace(kept)
            self.on_event(f"claims file {path} is damaged ({exc}); kept as {kept}, starting without it")
            return
        for d in entries:
            try:
                c = Claim.from_dict(d)
            except (ValueError, KeyError, TypeError, ProtocolError) as exc:
                self.on_event(f"a claim in {path} is damaged ({exc}); skipped")
                continue
            self._claims[(c.job_id, c.seat)] = c

    def _save(self) -> None:
        if self.path is not None:
            write_atomic(self.path, json.dumps([c.to_dict() for c in self._claims.values()]), mode=0o600)

    def add(self, claim: Claim) -> None:
        with self._lock:
            self._claims[(claim.job_id, claim.seat)] = claim
            self._save()

    def pending(self) -> list[Claim]:
        with self._lock:
            return list(self._claims.values())

    def _drop(self, c: Claim) -> None:
        with self._lock:
            self._claims.pop((c.job_id, c.seat), None)
            self._save()

    def _update(self) -> None:
        with self._lock:
            self._save()

    def tick(self) -> None:
        """One pass over the pending claims (synchronous: run it in a worker thread)."""
        claims = self.pending()
        if not claims:
            return
        now = self.chain.pending_time()
        for c in claims:
            try:
                self._advance(c, now)
            except ChainError as exc:
                # A revert here usually means the world moved (settled meanwhile): re-read next
                # tick rather than give up on money owed.
                self.on_event(f"job 0x{c.job_id.hex()[:12]}…: {exc}")

    def _advance(self, c: Claim, now: int) -> None:
        st = job_state(self.chain, c.job_id, c.job.open_block)
        short = f"job 0x{c.job_id.hex()[:12]}…"
        if st is None or st.closed:
            paid = int(st.settled["paid"][c.seat]) if st is not None else 0
            self._drop(c)
            self.on_event(f"{short}: closed; seat #{c.seat} paid {paid} base units")
            return
        c.job = st.job  # seats may have been added since it served
        action = seat_action(st, c, self.params, now, self.chain.w3.eth.block_number, self.dispute)
        if action.kind != "wait":
            self._act(c, st, action)
            self.on_event(f"{short}: {action.why}")
            if action.kind == "dispute":
                # The jury can be drawn from the next block, and must be within DRAW_WINDOW blocks:
                # draw it now (the draw runs in the pending block), not after this tick's other
                # claims have each mined a block of their own.
                self._act(c, st, Action("draw_jury", "jury drawn"))
                self.on_event(f"{short}: jury drawn")

    def _act(self, c: Claim, st: JobState, action: Action) -> None:
        """Send the transaction `action` names, and record what the claim must remember."""
        job, contest = st.job, st.contest
        if action.kind == "commit":
            self.mc.commit(self.account, job, c.seat, commitment(c.job_id, c.seat, self.account.address, c.output_hash,
                                                                 c.token_count, c.salt))
            c.committed = True
            self._update()
        elif action.kind == "reveal":
            self.mc.reveal(self.account, job, c.seat, c.output_hash, c.token_count, c.salt)
            c.revealed = True
            self._update()
        elif action.kind == "finalize":
            self.mc.finalize(self.account, job)
        elif action.kind == "dispute":
            assert contest is not None
            self.mc.dispute(self.account, job, contest, c.request)
            c.disputed = True
            self._update()
        elif action.kind == "draw_jury":
            assert contest is not None
            self.mc.draw_jury(self.account, job, contest)
        elif action.kind == "post_evidence":
            assert contest is not None
            self.mc.post_evidence(self.account, job, contest, c.seat, c.text_hash, c.tokens)
        elif action.kind == "resolve":
            assert contest is not None
            self.mc.resolve(self.account, job, contest)
