"""The provider's side of the liveness paths: get paid even when the consumer walks away.

For every job it served, the provider keeps what it signed (job, index, output hash, token count)
plus a random salt. A background task then watches the chain:

- from openedAt + deliveryWindow, if the job is still open: commit (a provider that committed
  can no longer be dropped or replaced by the consumer, and the fallback is prepared);
- from the end of the commit window: reveal;
- from the end of the reveal window: finalize (pays the revealed majority).

Normally the consumer settles within seconds and none of this costs a transaction: a claim is
dropped as soon as its job is seen closed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from eth_account.signers.local import LocalAccount

from mesh.chain import Chain
from mesh.errors import ChainError, ProtocolError
from mesh.market import MarketClient, commitment
from mesh.protocol import Job

log = logging.getLogger("meshmarket.provider.claims")


@dataclass
class Claim:
    job_id: bytes
    job: Job
    index: int
    output_hash: bytes
    token_count: int
    salt: bytes = field(default_factory=lambda: os.urandom(32))
    committed: bool = False
    revealed: bool = False

    def to_dict(self) -> dict:
        return {"job_id": "0x" + self.job_id.hex(), "job": self.job.to_wire(), "index": self.index,
                "output_hash": "0x" + self.output_hash.hex(), "token_count": self.token_count,
                "salt": "0x" + self.salt.hex(), "committed": self.committed, "revealed": self.revealed}

    @classmethod
    def from_dict(cls, d: dict) -> Claim:
        return cls(bytes.fromhex(d["job_id"][2:]), Job.parse(d["job"]), int(d["index"]),
                   bytes.fromhex(d["output_hash"][2:]), int(d["token_count"]), bytes.fromhex(d["salt"][2:]),
                   bool(d["committed"]), bool(d["revealed"]))


class ClaimKeeper:
    """Thread-safe set of served jobs not yet seen closed; `tick()` advances each one."""

    def __init__(self, chain: Chain, account: LocalAccount, on_event: Callable[[str], None] | None = None,
                 path: Path | None = None) -> None:
        self.chain = chain
        self.account = account
        self.mc = MarketClient(chain)
        p = chain.deployment.params
        self.delivery, self.settle, self.commit_w, self.reveal_w = (p.delivery_window, p.settle_window,
                                                                     p.commit_window, p.reveal_window)
        self._claims: dict[bytes, Claim] = {}
        self._lock = threading.Lock()
        self.on_event = on_event or (lambda msg: log.info(msg))
        #: Claims are money owed: they are written to disk (salt included: without it a commitment
        #: can never be revealed), so a restarted provider still collects.
        self.path = path
        if path is not None and path.exists():
            try:
                for d in json.loads(path.read_text()):
                    c = Claim.from_dict(d)
                    self._claims[c.job_id] = c
            except (ValueError, KeyError, TypeError, ProtocolError) as exc:
                self.on_event(f"claims file {path} is damaged ({exc}); starting without it")

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([c.to_dict() for c in self._claims.values()]))
        os.chmod(tmp, 0o600)  # the salts are secrets until revealed
        tmp.replace(self.path)

    def add(self, claim: Claim) -> None:
        with self._lock:
            self._claims[claim.job_id] = claim
            self._save()

    def pending(self) -> list[Claim]:
        with self._lock:
            return list(self._claims.values())

    def _drop(self, job_id: bytes) -> None:
        with self._lock:
            self._claims.pop(job_id, None)
            self._save()

    def _update(self) -> None:
        with self._lock:
            self._save()

    def tick(self) -> None:
        """One pass over the pending claims (synchronous: run it in a worker thread)."""
        claims = self.pending()
        if not claims:
            return
        now = self.chain.latest_time()
        for c in claims:
            try:
                self._advance(c, now)
            except ChainError as exc:
                # A revert here usually means the world moved (settled meanwhile, replaced):
                # re-read next tick rather than give up on money owed.
                self.on_event(f"job 0x{c.job_id.hex()[:12]}…: {exc}")

    def _advance(self, c: Claim, now: int) -> None:
        if not self.mc.is_open(c.job_id):
            self._drop(c.job_id)
            return
        if bytes(self.chain.market.functions.jobHashes(c.job_id).call()) != c.job.hash():
            # The consumer replaced this provider: the job is no longer ours to claim.
            self._drop(c.job_id)
            self.on_event(f"job 0x{c.job_id.hex()[:12]}…: replaced before settlement; nothing to claim")
            return
        opened = c.job.opened_at
        commit_end = opened + self.settle + self.commit_w
        reveal_end = commit_end + self.reveal_w
        if not c.committed and opened + self.delivery <= now < commit_end:
            self.mc.commit(self.account, c.job_id, c.job, c.index,
                           commitment(c.job_id, self.account.address, c.output_hash, c.token_count, c.salt))
            c.committed = True
            self._update()
            self.on_event(f"job 0x{c.job_id.hex()[:12]}…: not settled after the delivery window; result committed on-chain")
        elif c.committed and not c.revealed and commit_end <= now < reveal_end:
            self.mc.reveal(self.account, c.job_id, c.job, c.index, c.output_hash, c.token_count, c.salt)
            c.revealed = True
            self._update()
            self.on_event(f"job 0x{c.job_id.hex()[:12]}…: result revealed")
        elif now >= reveal_end:
            receipt = self.mc.finalize(self.account, c.job_id, c.job)
            ev = self.mc.settled_event(receipt)
            self._drop(c.job_id)
            self.on_event(f"job 0x{c.job_id.hex()[:12]}…: finalized without the consumer; paid {ev['paid'][c.index]} base units")
