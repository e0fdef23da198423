"""Closing what a query left open (`mesh settle`, and the start of every `mesh ask`).

A query settles at once when every seat answered. Otherwise its job waits in the journal
(consumer.journal) and moves on as the chain's clock allows:

    drawn, a seat missing      settle without it once the claim window is over (if it did not
                               commit), else finalize after the reveal window
    contested, no dispute      resolve after the dispute window (the provisional outcome)
    disputed                   draw the jury if nobody did; resolve after the court's reveal phase
    opened, never drawn        expire once its draw window (DRAW_WINDOW blocks) is over

The consumer's policy (`mesh.lifecycle.consumer_action`, a pure function of the job's on-chain
state, the seats whose results the journal holds and the chain's clock) decides; `settle_pending`
does it. Anyone may finalize, resolve or draw a jury: the providers' keepers do the same, so a race
is expected and a refusal that says the job moved on is not an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from eth_account.signers.local import LocalAccount

from meshmarket.consumer.journal import Journal, PendingJob
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import ChainError
from meshmarket.mesh.events import get_events
from meshmarket.mesh.lifecycle import Action, JobState, consumer_action, job_state
from meshmarket.mesh.market import CLOSED, OUTCOMES, ZERO32, MarketClient
from meshmarket.mesh.types import format_when

#: How far back (blocks) `settle_pending` looks for jobs opened but never journaled.
ORPHAN_SCAN = 100_000

NoteKind = Literal["adopted", "unknown_slots", "refused", "wait", "acted", "closed"]


@dataclass(frozen=True)
class SettleNote:
    """What `settle_pending` did or found for one job, for whoever shows it: `kind` says which
    (a "wait" means the job moves on only later: `at` is from when, 0 for blocks), `text` says it
    in words without naming any command (the CLI adds its own hint)."""

    kind: NoteKind
    text: str
    job_id: bytes = b""
    at: int = 0


def settle_pending(chain: Chain, account: LocalAccount, journal: Journal | None = None,
                   on_event: Callable[[SettleNote], None] | None = None) -> list[dict]:
    """Move every journaled job of `account` as far as the chain's clock allows; drop the closed
    ones. Returns one dict per job: its id, what was done, and the outcome if it closed."""
    journal = journal or Journal()
    say = on_event or (lambda msg: None)
    report = []
    _adopt_orphans(chain, account, journal, say)
    for pj in journal.pending():
        if pj.job is None or pj.job.consumer != account.address:
            continue
        report.append(_advance(chain, account, journal, pj, say))
    return report


def _adopt_orphans(chain: Chain, account: LocalAccount, journal: Journal, say: Callable[[SettleNote], None]) -> None:
    """Journal the account's jobs that are open on-chain but not in the journal (a crash between
    the open being mined and the journal being written): found from its busy ring slots and its
    JobOpened events in the last ORPHAN_SCAN blocks, then moved on like any other."""
    known = {pj.job.slot for pj in journal.pending() if pj.job is not None and pj.job.consumer == account.address}
    busy = [i for i, h in enumerate(chain.market.functions.slotsOf(account.address).call())
            if bytes(h) not in (ZERO32, CLOSED) and i not in known]
    if not busy:
        return
    head = chain.w3.eth.block_number
    start = max(chain.deployment.start_block or chain.deployment.block, head - ORPHAN_SCAN)
    opened = get_events(chain, ["JobOpened"], start, head, None, account.address)
    for ev in reversed(opened):
        slot = int(ev.args["slot"])
        if slot not in busy:
            continue
        busy.remove(slot)
        state = job_state(chain, ev.args["jobId"], ev.block_number)
        if state is not None and not state.closed:
            journal.save(PendingJob(state.job_id, state.job))
            say(SettleNote("adopted", f"job 0x{state.job_id.hex()[:12]}… was open on-chain but not in the journal "
                                      "(a crash?): adopted", state.job_id))
    if busy:
        say(SettleNote("unknown_slots", f"slot(s) {busy} hold jobs opened more than {ORPHAN_SCAN} blocks ago that "
                                        "the journal does not know"))


def _advance(chain: Chain, account: LocalAccount, journal: Journal, pj: PendingJob,
             say: Callable[[SettleNote], None]) -> dict:
    mc = MarketClient(chain)
    short = f"job 0x{pj.job_id.hex()[:12]}…"
    state = job_state(chain, pj.job_id, from_block=pj.job.open_block)
    if state is None:
        if not mc.is_open(pj.job):
            journal.remove(pj.job_id)  # never opened on this chain (a crash before the receipt, or a new chain)
        return {"job_id": "0x" + pj.job_id.hex(), "action": "gone"}
    if not state.closed:
        action = consumer_action(state, pj.results.keys(), chain.deployment.params, chain.pending_time(),
                                 chain.w3.eth.block_number)
        try:
            _act(mc, account, state, pj, action)
        except ChainError as exc:
            say(SettleNote("refused", f"{short}: {action.kind} refused: {exc.message}", pj.job_id))
            state = job_state(chain, pj.job_id, from_block=pj.job.open_block) or state  # a keeper may have acted
            if not state.closed:
                return {"job_id": "0x" + pj.job_id.hex(), "action": "failed", "error": str(exc)}
        else:
            if action.kind == "wait":
                when = f" {format_when(action.at, chain.pending_time())}" if action.at else ""
                say(SettleNote("wait", f"{short}: {action.why}{when}", pj.job_id, action.at))
                return {"job_id": "0x" + pj.job_id.hex(), "action": "wait", "why": action.why, "at": action.at}
            say(SettleNote("acted", f"{short}: {action.kind}: {action.why}", pj.job_id))
            state = job_state(chain, pj.job_id, from_block=pj.job.open_block) or state
            if not state.closed:
                return {"job_id": "0x" + pj.job_id.hex(), "action": action.kind, "closed": False}
    journal.remove(pj.job_id)
    ev = state.settled
    paid = [int(x) for x in ev["paid"]]
    say(SettleNote("closed", f"{short} closed ({OUTCOMES[ev['outcome']]}): paid {sum(paid)}, refund {ev['refund']} "
                             "base units", pj.job_id))
    return {"job_id": "0x" + pj.job_id.hex(), "action": "closed", "outcome": OUTCOMES[ev["outcome"]],
            "paid": paid, "slashed_mask": int(ev["slashMask"]), "refund": int(ev["refund"])}


def _act(mc: MarketClient, account: LocalAccount, state: JobState, pj: PendingJob, action: Action) -> None:
    job = state.job
    if action.kind == "settle":
        mc.settle(account, job, [pj.results.get(i) for i in range(job.seat_count)])
    elif action.kind == "finalize":
        mc.finalize(account, job)
    elif action.kind == "resolve":
        mc.resolve(account, job, state.contest)
    elif action.kind == "draw_jury":
        mc.draw_jury(account, job, state.contest)
    elif action.kind == "expire":
        mc.expire(account, job)
