"""Jury duty: a provider drawn as a juror judges a disputed job's outputs and votes.

Every registered provider can be drawn (stake-weighted) as a juror of a disputed job in its pool.
The keeper here finds the disputes it sits on (JuryDrawn events), waits for the evidence phase
to end, then for each judged seat scores the published output tokens under the model with the
job's request (`Judge`, provider/scorer.py: teacher forcing, docs/VERIFICATION.md), commits its
verdicts (pass, soft fail, hard fail; 2 bits per seat) and reveals them in the next phase. A seat
whose evidence never came is voted hard (the contract slashes it anyway). Votes and salts are
kept on disk, fsynced, so a restart still reveals what it committed. When to judge, commit and
reveal is the juror's policy (`mesh.lifecycle.juror_action`); the keeper executes it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from eth_account.signers.local import LocalAccount

from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import ChainError, ProtocolError
from meshmarket.mesh.events import get_events
from meshmarket.mesh.files import write_atomic
from meshmarket.mesh.lifecycle import JobState, job_state, juror_action
from meshmarket.mesh.market import HARD, MarketClient, pack_verdicts, vote_commitment
from meshmarket.mesh.protocol import Sampling, unpack_tokens

log = logging.getLogger("meshmarket.provider.court")


class Judge(Protocol):
    def verdict(self, sampling: Sampling, tokens: list[int], text_hash: bytes) -> tuple[int, str]:
        """(PASS | SOFT | HARD, reason) for one seat's output tokens and claimed text hash."""


@dataclass
class Duty:
    job_id: bytes
    open_block: int
    verdicts: dict[int, int] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    salt: bytes = field(default_factory=lambda: os.urandom(32))
    committed: bool = False
    revealed: bool = False

    def to_dict(self) -> dict:
        return {"job_id": "0x" + self.job_id.hex(), "open_block": self.open_block,
                "verdicts": {str(k): v for k, v in self.verdicts.items()}, "reasons": self.reasons,
                "salt": "0x" + self.salt.hex(), "committed": self.committed, "revealed": self.revealed}

    @classmethod
    def from_dict(cls, d: dict) -> Duty:
        return cls(bytes.fromhex(d["job_id"][2:]), int(d["open_block"]), {int(k): int(v) for k, v in d["verdicts"].items()},
                   {int(k): str(v) for k, v in d.get("reasons", {}).items()}, bytes.fromhex(d["salt"][2:]),
                   bool(d["committed"]), bool(d["revealed"]))


class CourtKeeper:
    """Finds this provider's jury seats and does its duty in each (synchronous `tick`)."""

    def __init__(self, chain: Chain, account: LocalAccount, judge: Judge | None,
                 on_event: Callable[[str], None] | None = None, path: Path | None = None) -> None:
        self.chain = chain
        self.account = account
        self.judge = judge
        self.mc = MarketClient(chain)
        self.params = chain.deployment.params
        self.on_event = on_event or (lambda msg: log.info(msg))
        self.path = path
        self._lock = threading.Lock()
        self._duties: dict[bytes, Duty] = {}
        self._cursor = chain.deployment.start_block or chain.deployment.block
        if path is not None and path.exists():
            data = json.loads(path.read_text())
            self._cursor = int(data.get("cursor", self._cursor))
            self._duties = {d.job_id: d for d in map(Duty.from_dict, data.get("duties", []))}

    def _save(self) -> None:
        if self.path is not None:
            write_atomic(self.path, json.dumps({"cursor": self._cursor,
                                                "duties": [d.to_dict() for d in self._duties.values()]}), mode=0o600)

    def duties(self) -> list[Duty]:
        with self._lock:
            return list(self._duties.values())

    def tick(self) -> None:
        self._find_new()
        now = self.chain.pending_time()
        for duty in self.duties():
            try:
                self._advance(duty, now)
            except ChainError as exc:
                self.on_event(f"jury 0x{duty.job_id.hex()[:12]}…: {exc}")

    def _find_new(self) -> None:
        """Scan JuryDrawn events since the last scan for juries this provider sits on."""
        head = self.chain.w3.eth.block_number
        if head < self._cursor:
            return
        me = self.account.address
        for ev in get_events(self.chain, ["JuryDrawn"], self._cursor, head):
            if me in ev.args["jurors"]:
                job_id = ev.args["jobId"]
                opened = get_events(self.chain, ["JobOpened"], self.chain.deployment.block, ev.block_number, job_id)
                with self._lock:
                    self._duties.setdefault(job_id, Duty(job_id, opened[0].block_number if opened else 0))
                self.on_event(f"jury 0x{job_id.hex()[:12]}…: drawn as a juror")
        with self._lock:
            self._cursor = head + 1
            self._save()

    def _advance(self, duty: Duty, now: int) -> None:
        st = job_state(self.chain, duty.job_id, duty.open_block or None)
        short = f"jury 0x{duty.job_id.hex()[:12]}…"
        action = juror_action(st, duty, self.params, now, self.account.address)
        if action.kind == "closed":
            with self._lock:
                self._duties.pop(duty.job_id, None)
                self._save()
            return
        assert st is not None
        if action.kind == "judge":
            self._judge(duty, st)
            action = juror_action(st, duty, self.params, now, self.account.address)
        if action.kind == "commit_vote":
            packed = pack_verdicts(duty.verdicts)
            self.mc.commit_vote(self.account, duty.job_id, vote_commitment(duty.job_id, self.account.address, packed,
                                                                          duty.salt))
            duty.committed = True
            with self._lock:
                self._save()
            self.on_event(f"{short}: vote committed ({', '.join(f'#{s} {v}' for s, v in duty.reasons.items())})")
        elif action.kind == "reveal_vote":
            self.mc.reveal_vote(self.account, duty.job_id, pack_verdicts(duty.verdicts), duty.salt)
            duty.revealed = True
            with self._lock:
                self._save()
            self.on_event(f"{short}: vote revealed")

    def _judge(self, duty: Duty, st: JobState) -> None:
        """Score every judged seat's published output under the model, with the job's request."""
        try:
            request = json.loads(st.request or b"{}")
            sampling = Sampling.parse(request.get("sampling"))
        except (ValueError, ProtocolError) as exc:
            # The contract checked keccak256(request) == promptHash: only a job opened with a
            # request that is not the protocol's can get here. Nobody can be judged on it.
            sampling, request = None, {"error": str(exc)}
        contest = st.contest
        assert contest is not None  # a jury sits only on a contested job
        for seat in contest.seats(contest.present):
            if seat not in st.evidence:
                duty.verdicts[seat], duty.reasons[seat] = HARD, "no evidence published"
            elif sampling is None or self.judge is None:
                duty.verdicts[seat], duty.reasons[seat] = 0, "cannot judge: no usable request or no model"
            else:
                text_hash, tokens = st.evidence[seat]
                duty.verdicts[seat], duty.reasons[seat] = self.judge.verdict(sampling, unpack_tokens(tokens), text_hash)
