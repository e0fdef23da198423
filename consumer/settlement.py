"""Closing what a query left open (`mesh settle`, and the start of every `mesh ask`).

A query settles at once when every seat answered. Otherwise its job waits in the journal
(consumer.journal) and moves on as the chain's clock allows:

    drawn, a seat missing      settle without it once the claim window is over (if it did not
                               commit), else finalize after the reveal window
    contested, no dispute      resolve after the dispute window (the provisional outcome)
    disputed                   draw the jury if nobody did; resolve after the court's reveal phase
    opened, never drawn        expire once its draw window (DRAW_WINDOW blocks) is over

`next_action` decides (a pure function of the job's on-chain state, what the journal holds and the
time); `settle_pending` does it. Anyone may finalize, resolve or draw a jury: the providers' keepers
do the same, so a race is expected and a refusal that says the job moved on is not an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount

from meshmarket.consumer.journal import Journal, PendingJob
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.config import MarketParams
from meshmarket.mesh.errors import ChainError
from meshmarket.mesh.market import CLOSED, DRAW_WINDOW, OUTCOMES, ZERO32, JobState, MarketClient, job_state
from meshmarket.mesh.types import format_when



#: How far back (blocks) `settle_pending` looks for jobs opened but never journaled.
ORPHAN_SCAN = 100_000


@dataclass(frozen=True)
class Action:
    #: "settle", "finalize", "resolve", "draw_jury", "expire" or "wait".
    kind: str
    #: Why, or until when (for "wait").
    why: str
    #: Chain time from which something can happen (0 when acting now or never).
    at: int = 0


def next_action(state: JobState, results: dict, params: MarketParams, now: int, block: int) -> Action:
    """What the consumer can do for this job now. `results`: the signed results it holds by seat;
    `now` the time a transaction sent now would see; `block` the latest block number."""
    job = state.job
    if state.contested:
        return _court_action(state, params, now, block)
    if job.drawn_at == 0:
        if block > job.open_block + DRAW_WINDOW:
            return Action("expire", "never drawn, and its draw window is over")
        return Action("wait", f"never drawn; it expires after block {job.open_block + DRAW_WINDOW}")
    claim_end = job.drawn_at + params.delivery_window + params.claim_window
    reveal_end = claim_end + params.reveal_window
    missing = [i for i in range(job.seat_count) if i not in results]
    if now >= reveal_end:
        return Action("finalize", "the reveal window is over")
    if not missing:
        return Action("settle", "every seat answered")
    if now < claim_end:
        return Action("wait", f"seat(s) {_seats(missing)} did not answer: their claim window ends", claim_end)
    committed = [i for i in missing if i in state.committed]
    if committed:
        return Action("wait", f"seat(s) {_seats(committed)} claimed a result: it is revealed by", reveal_end)
    return Action("settle", f"seat(s) {_seats(missing)} left out after their claim window")


def _court_action(state: JobState, params: MarketParams, now: int, block: int) -> Action:
    contest = state.contest
    assert contest is not None
    if state.disputer is None:
        end = contest.contested_at + params.dispute_window
        if now >= end:
            return Action("resolve", "nobody disputed: the provisional outcome stands")
        return Action("wait", "contested: a party may dispute until", end)
    if state.void:
        return Action("resolve", "no jury could be drawn: the provisional outcome stands")
    if state.jury_at is None:
        assert state.dispute_block is not None
        if block > state.dispute_block + DRAW_WINDOW:
            return Action("resolve", "no jury was drawn in its window: the provisional outcome stands")
        if block > state.dispute_block:
            return Action("draw_jury", "disputed: the jury is drawn")
        return Action("wait", "disputed: the jury is drawn from the next block")
    court_end = state.jury_at + 3 * params.court_phase
    if now >= court_end:
        return Action("resolve", "the jury has voted")
    return Action("wait", "the jury judges until", court_end)


def _seats(seats: list[int]) -> str:
    return ", ".join(f"#{i}" for i in seats)


def settle_pending(chain: Chain, account: LocalAccount, journal: Journal | None = None,
                   on_event: Callable[[str], None] | None = None) -> list[dict]:
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


def _adopt_orphans(chain: Chain, account: LocalAccount, journal: Journal, say: Callable[[str], None]) -> None:
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
    opened = chain.market.events.JobOpened().get_logs(from_block=start, to_block=head,
                                                      argument_filters={"consumer": account.address})
    for log in sorted(opened, key=lambda lg: lg["blockNumber"], reverse=True):
        slot = int(log["args"]["slot"])
        if slot not in busy:
            continue
        busy.remove(slot)
        state = job_state(chain, bytes(log["args"]["jobId"]), log["blockNumber"])
        if state is not None and not state.closed:
            journal.save(PendingJob(state.job_id, state.job))
            say(f"job 0x{state.job_id.hex()[:12]}… was open on-chain but not in the journal (a crash?): adopted")
    if busy:
        say(f"slot(s) {busy} hold jobs opened more than {ORPHAN_SCAN} blocks ago that the journal does not know")


def _advance(chain: Chain, account: LocalAccount, journal: Journal, pj: PendingJob,
             say: Callable[[str], None]) -> dict:
    mc = MarketClient(chain)
    short = f"job 0x{pj.job_id.hex()[:12]}…"
    state = job_state(chain, pj.job_id, from_block=pj.job.open_block)
    if state is None:
        if not mc.is_open(pj.job):
            journal.remove(pj.job_id)  # never opened on this chain (a crash before the receipt, or a new chain)
        return {"job_id": "0x" + pj.job_id.hex(), "action": "gone"}
    if not state.closed:
        action = next_action(state, pj.results, chain.deployment.params, chain.pending_time(),
                             chain.w3.eth.block_number)
        try:
            _act(mc, account, state, pj, action)
        except ChainError as exc:
            say(f"{short}: {action.kind} refused: {exc}")
            state = job_state(chain, pj.job_id, from_block=pj.job.open_block) or state  # a keeper may have acted
            if not state.closed:
                return {"job_id": "0x" + pj.job_id.hex(), "action": "failed", "error": str(exc)}
        else:
            if action.kind == "wait":
                when = f" {format_when(action.at, chain.pending_time())}" if action.at else ""
                say(f"{short}: {action.why}{when}; `mesh settle` then")
                return {"job_id": "0x" + pj.job_id.hex(), "action": "wait", "why": action.why, "at": action.at}
            say(f"{short}: {action.kind}: {action.why}")
            state = job_state(chain, pj.job_id, from_block=pj.job.open_block) or state
            if not state.closed:
                return {"job_id": "0x" + pj.job_id.hex(), "action": action.kind, "closed": False}
    journal.remove(pj.job_id)
    ev = state.settled
    paid = [int(x) for x in ev["paid"]]
    say(f"{short} closed ({OUTCOMES[ev['outcome']]}): paid {sum(paid)}, refund {ev['refund']} base units")
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
