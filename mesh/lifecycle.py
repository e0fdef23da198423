"""A job's lifecycle, defined once: its state, its clock, and what each party should do next.

    job_state(chain, job_id) -> JobState      the job folded from its market events (mesh/events.py)
    Deadlines.of(state, params)               every deadline of the job, from the contract's parameters
    consumer_action(state, held, params, now, block) -> Action
    seat_action(state, claim, params, now, block, dispute) -> Action
    juror_action(state, duty, params, now) -> Action

The market stores one hash per job; everything else a party needs is in the job's events, so the
state is rebuilt from them (`fold`, pure). The policies are pure functions of that state, of what
the party holds (the consumer its signed results, a seat its claim, a juror its duty) and of the
chain's clock; the keepers (consumer/settlement.py's `settle_pending`, provider/claims.py's
`ClaimKeeper`, provider/court.py's `CourtKeeper`) only execute the action chosen: send the
transaction, save what must survive a restart, log. tests/test_lifecycle.py checks the policies
against the contract's rules (no action after its deadline) and that some party always moves a job
on to its close.

Clock. `now` is the time a transaction sent now will see (`Chain.pending_time`); `block` is the
latest block's number, so a transaction sent now is mined in block + 1 at the earliest.
contracts/src/JobMarket.sol is the source of truth for every deadline: `Deadlines` names the check
each one mirrors.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from eth_abi import encode as abi_encode
from eth_utils import keccak

from meshmarket.mesh.chain import Chain
from meshmarket.mesh.config import MarketParams
from meshmarket.mesh.events import MARKET_EVENTS, Event, get_events
from meshmarket.mesh.protocol import Job

#: Blocks after the open (or the dispute) within which the seats (or the jury) are drawn (JobMarket.DRAW_WINDOW).
DRAW_WINDOW = 8
CONTEST_ABI = "(bytes32[5],uint64[5],uint8,uint8,uint8,uint64,uint64[5])"


@dataclass(frozen=True)
class Contest:
    """JobMarket.Contest: the results of a contested job (seat masks as bit sets)."""

    outputs: tuple[bytes, ...]
    counts: tuple[int, ...]
    present: int
    slashed: int
    provisional: int
    contested_at: int
    locks: tuple[int, ...]

    def as_abi(self) -> tuple:
        return (list(self.outputs), list(self.counts), self.present, self.slashed, self.provisional,
                self.contested_at, list(self.locks))

    def slot_hash(self, job: Job) -> bytes:
        """What the market stores for `job` while it is contested."""
        return keccak(job.hash() + abi_encode([CONTEST_ABI], [self.as_abi()]))

    def seats(self, mask: int) -> list[int]:
        return [i for i in range(5) if mask >> i & 1]

    @classmethod
    def from_event(cls, c) -> Contest:
        """From JobContested's `contest` argument (a tuple or a dict)."""
        if hasattr(c, "keys"):  # a dict, or web3's AttributeDict
            c = (c["outputs"], c["counts"], c["present"], c["slashed"], c["provisional"], c["contestedAt"],
                 c["locks"])
        return cls(tuple(bytes(o) for o in c[0]), tuple(int(n) for n in c[1]), int(c[2]), int(c[3]), int(c[4]),
                   int(c[5]), tuple(int(n) for n in c[6]))


# ------------------------------------------------------------------------------ the state


@dataclass
class JobState:
    """Everything the chain says about one job, rebuilt from its events (the market stores only a
    hash): the current Job (seats added applied), its contest and dispute, and whether it closed."""

    job_id: bytes
    job: Job
    contest: Contest | None = None
    disputer: str | None = None
    dispute_block: int | None = None
    request: bytes | None = None
    jurors: tuple[str, ...] = ()
    jury_at: int | None = None
    evidence: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # seat -> (textHash, tokens)
    committed: set[int] = field(default_factory=set)
    revealed: set[int] = field(default_factory=set)
    #: Jurors (lower-case addresses) whose vote commitment / vote is on-chain.
    votes_committed: set[str] = field(default_factory=set)
    votes_revealed: set[str] = field(default_factory=set)
    void: bool = False  # a dispute whose jury could not be drawn
    settled: dict | None = None  # JobSettled's arguments

    @property
    def closed(self) -> bool:
        return self.settled is not None

    @property
    def contested(self) -> bool:
        return self.contest is not None and not self.closed


def fold(job_id: bytes, events: Iterable[Event]) -> JobState | None:
    """The job's state from its market events in chain order (None before its JobOpened). A
    JuryDrawn event must carry its block's time: the court's phases count from it."""
    state: JobState | None = None
    for e in events:
        if e.contract != "market" or bytes(e.args["jobId"]) != bytes(job_id):
            continue
        if e.name == "JobOpened":
            state = JobState(bytes(job_id), Job.from_event(e.args, e.block_number))
        elif state is not None:
            _apply(state, e)
    return state


def _apply(state: JobState, e: Event) -> None:
    args = e.args
    if e.name == "SeatsDrawn":
        state.job = state.job.drawn(args["seed"], args["drawnAt"], args["seats"], args["prices"])
    elif e.name == "SeatAdded":
        state.job = state.job.with_seat(args["seat"], args["provider"], args["price"])
    elif e.name == "ResultCommitted":
        state.committed.add(int(args["seat"]))
    elif e.name == "ResultRevealed":
        state.revealed.add(int(args["seat"]))
    elif e.name == "JobContested":
        state.contest = Contest.from_event(args["contest"])
    elif e.name == "DisputeOpened":
        state.disputer, state.dispute_block, state.request = args["disputer"], e.block_number, bytes(args["request"])
    elif e.name == "JuryDrawn":
        state.jurors = tuple(a for a in args["jurors"] if int(a, 16))
        state.void = not state.jurors
        if state.jurors:
            if e.block_time is None:
                raise ValueError("a JuryDrawn event without its block's time")
            state.jury_at = e.block_time
    elif e.name == "EvidencePosted":
        state.evidence[int(args["seat"])] = (bytes(args["textHash"]), bytes(args["tokens"]))
    elif e.name == "VoteCommitted":
        state.votes_committed.add(str(args["juror"]).lower())
    elif e.name == "VoteRevealed":
        state.votes_revealed.add(str(args["juror"]).lower())
    elif e.name == "JobSettled":
        state.settled = dict(args)


def job_state(chain: Chain, job_id: bytes, from_block: int | None = None) -> JobState | None:
    """The job's state from its events (one eth_getLogs), or None if no JobOpened is found."""
    start = from_block or chain.deployment.start_block or chain.deployment.block
    events = get_events(chain, MARKET_EVENTS, start, "latest", bytes(job_id))
    # Nodes that leave blockTimestamp out of their logs: the jury's time from its block.
    events = [replace(e, block_time=int(chain.w3.eth.get_block(e.block_number)["timestamp"]))
              if e.name == "JuryDrawn" and e.block_time is None else e for e in events]
    return fold(job_id, events)


# ------------------------------------------------------------------------------ the clock


def _need(value: int | None, what: str) -> int:
    if value is None:
        raise ValueError(f"no {what}: this deadline does not apply yet")
    return value


@dataclass(frozen=True)
class Deadlines:
    """Every deadline of one job, from its Job, contest and dispute and the market's parameters
    (`chain.deployment.params`: JobMarket's immutables) and DRAW_WINDOW. Each one names the check
    of contracts/src/JobMarket.sol it mirrors. Times are chain seconds (block.timestamp): a window
    [start, end) admits a transaction at `start` and refuses one at `end`. Blocks are numbers: a
    "last block" is the last one a transaction may be mined in."""

    params: MarketParams
    job: Job
    contest: Contest | None = None
    dispute_block: int | None = None
    jury_at: int | None = None

    @classmethod
    def of(cls, state: JobState, params: MarketParams) -> Deadlines:
        return cls(params, state.job, state.contest, state.dispute_block, state.jury_at)

    # -- the open job

    @property
    def draw_last_block(self) -> int:
        """drawSeats' last block (_seed: `block.number > openBlock + DRAW_WINDOW` reverts
        DrawExpired); expire from the block after (expire: `block.number <= openBlock +
        DRAW_WINDOW` reverts TooEarly)."""
        return self.job.open_block + DRAW_WINDOW

    @property
    def drawn_at(self) -> int:
        if not self.job.drawn_at:
            raise ValueError("the job is not drawn: its windows have not started")
        return self.job.drawn_at

    @property
    def delivery_end(self) -> int:
        """drawnAt + deliveryWindow: addSeat before it (TooLate), commitResult from it (TooEarly)."""
        return self.drawn_at + self.params.delivery_window

    @property
    def claim_end(self) -> int:
        """deliveryEnd + claimWindow: commitResult before it (TooLate); revealResult from it
        (TooEarly); settle may leave a seat out from it (MissingResult); finalize from it when no
        seat committed."""
        return self.delivery_end + self.params.claim_window

    @property
    def reveal_end(self) -> int:
        """claimEnd + revealWindow: revealResult and settle before it (TooLate); finalize from it
        when a seat committed."""
        return self.claim_end + self.params.reveal_window

    def finalize_from(self, any_commit: bool) -> int:
        """finalize's `opensAt`: claimEnd when no seat committed, else revealEnd."""
        return self.reveal_end if any_commit else self.claim_end

    # -- the court

    @property
    def dispute_end(self) -> int:
        """contestedAt + disputeWindow: dispute before it (TooLate); resolve without a dispute from it
        (TooEarly)."""
        if self.contest is None:
            raise ValueError("the job is not contested")
        return self.contest.contested_at + self.params.dispute_window

    @property
    def jury_last_block(self) -> int:
        """drawJury's last block (_seed(jobId, openedBlock), from the block after the dispute);
        resolve of a dispute nobody drew a jury for from the block after it (resolve: `block.number
        <= openedBlock + DRAW_WINDOW` reverts NoJury)."""
        return _need(self.dispute_block, "dispute") + DRAW_WINDOW

    @property
    def evidence_end(self) -> int:
        """juryAt + courtPhase: postEvidence before it (TooLate); the vote commit phase from it."""
        return _need(self.jury_at, "jury") + self.params.court_phase

    @property
    def vote_commit(self) -> tuple[int, int]:
        """commitVote's window [juryAt + courtPhase, juryAt + 2 courtPhase)."""
        return self.evidence_end, self.evidence_end + self.params.court_phase

    @property
    def vote_reveal(self) -> tuple[int, int]:
        """revealVote's window [juryAt + 2 courtPhase, juryAt + 3 courtPhase)."""
        return self.vote_commit[1], self.court_end

    @property
    def court_end(self) -> int:
        """juryAt + 3 courtPhase: resolve of a judged dispute from it (TooEarly)."""
        return _need(self.jury_at, "jury") + self.court_length

    @property
    def court_length(self) -> int:
        """The court's three phases (evidence, vote commit, vote reveal), from the jury's draw."""
        return 3 * self.params.court_phase


# ------------------------------------------------------------------------------ the policies

ActionKind = Literal["expire", "settle", "commit", "reveal", "finalize", "dispute", "draw_jury", "post_evidence",
                     "resolve", "judge", "commit_vote", "reveal_vote", "closed", "wait"]


@dataclass(frozen=True)
class Action:
    """What a party does next: `kind` (a contract call, "judge" (a juror scores the evidence),
    "closed" (nothing more: the job closed) or "wait"), `why` in words, and for "wait" the chain
    time from which something can happen (0 when it waits for blocks, or for nothing)."""

    kind: ActionKind
    why: str
    at: int = 0


def _seats(seats: Iterable[int]) -> str:
    return ", ".join(f"#{i}" for i in seats)


CourtCase = Literal["undisputed_over", "undisputed", "void", "jury_late", "jury_due", "jury_next_block",
                    "court_over", "court"]


def _court(state: JobState, d: Deadlines, now: int, block: int) -> tuple[ActionKind, CourtCase]:
    """What anybody can do for a contested job: resolve, draw the jury, or wait (and which case)."""
    if state.disputer is None:
        return ("resolve", "undisputed_over") if now >= d.dispute_end else ("wait", "undisputed")
    if state.void:
        return "resolve", "void"
    if state.jury_at is None:
        # A draw sent now is mined in block + 1 at the earliest: from jury_last_block on it would
        # come too late, while resolve (from the block after it) is then due.
        if block >= d.jury_last_block:
            return "resolve", "jury_late"
        # The jury is drawn from the block after the dispute; one more block of margin.
        return ("draw_jury", "jury_due") if block > _need(state.dispute_block, "dispute") else ("wait", "jury_next_block")
    return ("resolve", "court_over") if now >= d.court_end else ("wait", "court")


_CONSUMER_COURT: dict[CourtCase, str] = {
    "undisputed_over": "nobody disputed: the provisional outcome stands",
    "undisputed": "contested: a party may dispute until",
    "void": "no jury could be drawn: the provisional outcome stands",
    "jury_late": "no jury was drawn in its window: the provisional outcome stands",
    "jury_due": "disputed: the jury is drawn",
    "jury_next_block": "disputed: the jury is drawn from the next block",
    "court_over": "the jury has voted",
    "court": "the jury judges until",
}


def consumer_action(state: JobState, held: Collection[int], params: MarketParams, now: int, block: int) -> Action:
    """What the consumer can do for its job: `held` are the seats whose signed results it holds.
    A missing seat is left out once its claim window is over (if it did not commit), else the job
    is finalized after the reveal window; a contested job resolves when its court allows; a job
    never drawn expires after its draw window."""
    job = state.job
    if state.closed:
        return Action("closed", "the job is closed")
    if state.contest is not None:
        d = Deadlines.of(state, params)
        kind, case = _court(state, d, now, block)
        at = d.dispute_end if case == "undisputed" else d.court_end if case == "court" else 0
        return Action(kind, _CONSUMER_COURT[case], at)
    if job.drawn_at == 0:
        d = Deadlines(params, job)
        # expire is valid from the block after draw_last_block: a block later here, as always.
        if block > d.draw_last_block:
            return Action("expire", "never drawn, and its draw window is over")
        return Action("wait", f"never drawn; it expires after block {d.draw_last_block}")
    d = Deadlines(params, job)
    missing = [i for i in range(job.seat_count) if i not in held]
    if now >= d.reveal_end:
        return Action("finalize", "the reveal window is over")
    if not missing:
        return Action("settle", "every seat answered")
    if now < d.claim_end:
        return Action("wait", f"seat(s) {_seats(missing)} did not answer: their claim window ends", d.claim_end)
    committed = [i for i in missing if i in state.committed]
    if committed:
        return Action("wait", f"seat(s) {_seats(committed)} claimed a result: it is revealed by", d.reveal_end)
    return Action("settle", f"seat(s) {_seats(missing)} left out after their claim window")


class SeatClaim(Protocol):
    """What a seat's keeper holds for one job (provider.claims.Claim)."""

    @property
    def seat(self) -> int: ...
    @property
    def committed(self) -> bool: ...
    @property
    def revealed(self) -> bool: ...
    @property
    def disputed(self) -> bool: ...


def seat_action(state: JobState, claim: SeatClaim, params: MarketParams, now: int, block: int,
                dispute: bool = True) -> Action:
    """What a seat that delivered does so that it is paid whatever the consumer does: on an open
    job, commit its claim after the delivery window, reveal it after the claim window, finalize
    when allowed; on a contested one, dispute a provisional loss (when `dispute`, if its result is
    valid and the job's fee can pay a jury; the keeper then draws the jury in its next
    transaction), draw the jury if nobody did, publish its evidence, resolve. `why` is what the
    keeper logs once it is done."""
    if state.closed:
        return Action("closed", "the job is closed")
    if state.contest is not None:
        return _seat_court(state, claim, params, now, block, dispute)
    job, d = state.job, Deadlines(params, state.job)
    if job.drawn_at == 0:
        return Action("wait", "the job is not drawn")  # never for a claim: a seat serves drawn jobs only
    finalize_at = d.finalize_from(bool(state.committed))
    # The chain's word counts too: a keeper that crashed after its commit (or reveal) was mined but
    # before it recorded so still reveals (its salt was saved before the commit was sent).
    committed = claim.committed or claim.seat in state.committed
    revealed = claim.revealed or claim.seat in state.revealed
    if not committed and d.delivery_end <= now < d.claim_end:
        return Action("commit", "not settled after the delivery window; claim committed on-chain")
    if committed and not revealed and d.claim_end <= now < d.reveal_end:
        return Action("reveal", "claim revealed")
    if now >= finalize_at:
        return Action("finalize", "finalized without the consumer")
    nexts = [t for t in (d.delivery_end if not committed else None,
                         d.claim_end if committed and not revealed else None, finalize_at)
             if t is not None and t > now]
    return Action("wait", "the consumer may still settle", min(nexts))


_SEAT_COURT: dict[CourtCase, str] = {
    "undisputed_over": "contest resolved on its provisional outcome",
    "jury_late": "no jury was drawn in time; resolved on the provisional outcome",
    "jury_due": "jury drawn",
    "void": "dispute resolved",
    "court_over": "dispute resolved",
}


def _seat_court(state: JobState, claim: SeatClaim, params: MarketParams, now: int, block: int,
                dispute: bool) -> Action:
    job, contest, d = state.job, state.contest, Deadlines.of(state, params)
    assert contest is not None
    kind, case = _court(state, d, now, block)
    if kind != "wait":
        return Action(kind, _SEAT_COURT[case])
    mine = bool(contest.present >> claim.seat & 1)
    if case == "undisputed":
        if (mine and dispute and not claim.disputed and not contest.provisional >> claim.seat & 1
                and job.jury_fee >= params.min_jury_fee):
            return Action("dispute", f"contested and not paid provisionally; disputed (bond {job.jury_fee})")
        return Action("wait", "contested: a party may dispute until", d.dispute_end)
    if case == "court" and mine and claim.seat not in state.evidence and now < d.evidence_end:
        return Action("post_evidence", f"evidence for seat #{claim.seat} published")
    return Action("wait", _CONSUMER_COURT[case], d.court_end if case == "court" else 0)


class JuryDuty(Protocol):
    """What a juror's keeper holds for one dispute (provider.court.Duty)."""

    @property
    def verdicts(self) -> Mapping[int, int]: ...
    @property
    def committed(self) -> bool: ...
    @property
    def revealed(self) -> bool: ...


def juror_action(state: JobState | None, duty: JuryDuty, params: MarketParams, now: int,
                 juror: str | None = None) -> Action:
    """What a drawn juror does: once the evidence phase is over, judge the published outputs and
    commit its verdicts; reveal them in the reveal phase. "closed": the duty is over. The chain's
    word counts beside the duty's flags (`juror`: its address): a keeper killed after its commit
    was mined but before it recorded so still reveals (its salt was saved when the duty was found;
    judging again gives the verdicts back)."""
    if state is None or state.closed or state.contest is None or state.jury_at is None:
        return Action("closed", "the job closed, or has no jury")
    d = Deadlines.of(state, params)
    (commit_at, reveal_at), (_, reveal_end) = d.vote_commit, d.vote_reveal
    me = (juror or "").lower()
    committed = duty.committed or me in state.votes_committed
    revealed = duty.revealed or me in state.votes_revealed
    if not committed and commit_at <= now < reveal_at:
        if not duty.verdicts:
            return Action("judge", "the evidence phase is over")
        return Action("commit_vote", "the vote commit phase")
    if committed and not revealed and reveal_at <= now < reveal_end:
        if not duty.verdicts:
            return Action("judge", "its committed verdicts were not recorded: judged again to reveal them")
        return Action("reveal_vote", "the vote reveal phase")
    nexts = [t for t in (commit_at if not committed else None, reveal_at if not revealed else None)
             if t is not None and t > now]
    return Action("wait", "the court's next phase", min(nexts) if nexts else 0)
