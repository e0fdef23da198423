"""The job's lifecycle (mesh/lifecycle.py), pure: no chain. A small model of JobMarket.sol plays a
job from its open to its close while the clock moves in jumps of any size, with every party
present or absent as Hypothesis chooses: the consumer (`consumer_action`), each seat that served
(`seat_action`, executed as ClaimKeeper does: a dispute is followed by the jury's draw) and each
drawn juror (`juror_action`, executed as CourtKeeper does: judge, then commit).

Properties:
  - no policy ever chooses an action the contract would refuse for its time or block: the
    contract's checks are written here again from JobMarket.sol (`allowed`), apart from
    `Deadlines`, so the two are compared, not one with itself;
  - liveness: whenever the consumer, or a seat's keeper of a drawn job, is present, the job closes
    (no state where every party waits forever once time passes every deadline);
  - every "wait" says until when (a time after now) or waits for blocks (0);
  - the state is always the fold of the job's events (`fold`), as job_state builds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings, strategies as st

from meshmarket.mesh.config import MarketParams
from meshmarket.mesh.events import Event
from meshmarket.mesh.lifecycle import (
    DRAW_WINDOW,
    Action,
    Deadlines,
    JobState,
    consumer_action,
    fold,
    juror_action,
    seat_action,
)
from meshmarket.mesh.protocol import ZERO_ADDRESS

CONSUMER = "0x" + "c0" * 20
SEATS = ["0x" + f"{0xa0 + i:02x}" * 20 for i in range(5)]
JURORS = ["0x" + f"{0xe0 + i:02x}" * 20 for i in range(3)]
JOB_ID = keccak(b"the job")
T0 = 1_000_000


@dataclass
class SeatClaim:
    seat: int
    committed: bool = False
    revealed: bool = False
    disputed: bool = False


@dataclass
class Duty:
    verdicts: dict[int, int] = field(default_factory=dict)
    committed: bool = False
    revealed: bool = False


@dataclass
class World:
    """The chain (the job's events, the latest block, the time a transaction now would see) and
    the parties Hypothesis put in it."""

    params: MarketParams
    seat_count: int
    outputs: dict[int, int]  # served seat -> its answer (equal answers agree)
    held: set[int]  # seats whose signed result the consumer holds
    consumer: bool
    keepers: dict[int, SeatClaim]  # present keepers of served seats
    disputes: dict[int, bool]
    jury_possible: bool
    jurors_present: set[str]
    fee: int
    #: The consumer's query disputes a contest at once (consumer/query.py) and draws the jury in its
    #: next transaction, unless it dies in between; a seat's follow-up draw may fail too.
    query_disputes: bool = False
    dies_before_draw: bool = False
    events: list[Event] = field(default_factory=list)
    duties: dict[str, Duty] = field(default_factory=dict)
    block: int = 100
    now: int = T0
    log: list[str] = field(default_factory=list)
    _state: JobState | None = None

    @property
    def state(self) -> JobState:
        """The job as job_state builds it: the fold of its events."""
        if self._state is None:
            self._state = fold(JOB_ID, self.events)
            assert self._state is not None
        return self._state

    def emit(self, name: str, **args) -> None:
        """A transaction mined in the next block, at `now`, emitting one event."""
        self._state = None
        self.block += 1
        self.events.append(Event("market", name, {"jobId": JOB_ID, **args}, self.block, len(self.events),
                                 keccak(b"%d" % len(self.events)), keccak(b"b%d" % self.block), self.now))


# ------------------------------------------------------------------------------ JobMarket.sol, again


def allowed(w: World, who: str, a: Action, seat: int | None = None) -> bool:
    """Would the contract accept `a` sent now by `who`? Each line is the require of JobMarket.sol
    for it (time: `now`; the block: the next one)."""
    s, p, block = w.state, w.params, w.block + 1
    job, c = s.job, s.contest
    drawn = job.drawn_at
    claim_end = drawn + p.delivery_window + p.claim_window
    d_block = s.dispute_block
    kind = a.kind
    if s.closed:
        return False
    if kind == "expire":
        return c is None and drawn == 0 and block > job.open_block + DRAW_WINDOW
    if kind == "settle":
        missing = [i for i in range(job.seat_count) if i not in w.held]
        return (c is None and drawn != 0 and who == "consumer" and w.now < claim_end + p.reveal_window
                and all(w.now >= claim_end and i not in s.committed for i in missing))
    if kind == "commit":
        return (c is None and drawn != 0 and seat not in s.committed
                and drawn + p.delivery_window <= w.now < claim_end)
    if kind == "reveal":
        return c is None and seat in s.committed and seat not in s.revealed and claim_end <= w.now < claim_end + p.reveal_window
    if kind == "finalize":
        return c is None and drawn != 0 and w.now >= (claim_end + p.reveal_window if s.committed else claim_end)
    if c is None:
        return False
    if kind == "dispute":
        party = who == "consumer" or (seat is not None and c.present >> seat & 1)
        return bool(s.disputer is None and party and w.now < c.contested_at + p.dispute_window
                    and job.jury_fee >= p.min_jury_fee)
    if kind == "draw_jury":
        return (s.disputer is not None and s.jury_at is None and not s.void and d_block is not None
                and d_block < block <= d_block + DRAW_WINDOW)
    if kind == "post_evidence":
        return s.jury_at is not None and w.now < s.jury_at + p.court_phase and bool(c.present >> seat & 1)
    if kind == "commit_vote":
        return s.jury_at is not None and s.jury_at + p.court_phase <= w.now < s.jury_at + 2 * p.court_phase
    if kind == "reveal_vote":
        return s.jury_at is not None and s.jury_at + 2 * p.court_phase <= w.now < s.jury_at + 3 * p.court_phase
    if kind == "resolve":
        if s.disputer is None:
            return w.now >= c.contested_at + p.dispute_window
        if s.void:
            return True
        if s.jury_at is None:
            return d_block is not None and block > d_block + DRAW_WINDOW
        return w.now >= s.jury_at + 3 * p.court_phase
    raise AssertionError(f"unknown action {kind}")


def conclude(w: World, results: dict[int, int]) -> None:
    """JobMarket._conclude over the valid results {seat: answer}: agreed or refunded closes the
    job, anything else contests it with the strict majority (two or more) as provisional."""
    valid = len(results)
    groups: dict[int, int] = {}
    for i, out in results.items():
        groups[out] = groups.get(out, 0) | 1 << i
    best = max(groups.values(), key=lambda m: bin(m).count("1"), default=0)
    n_best = bin(best).count("1")
    tie = sum(1 for m in groups.values() if bin(m).count("1") == n_best) > 1
    present = sum(1 << i for i in results)
    if valid == 0 or (valid >= 2 and n_best == valid):
        w.emit("JobSettled", outcome=0 if valid else 3, present=present, paid=[0] * 5, slashMask=0, refund=0)
        return
    provisional = best if not tie and n_best >= 2 and n_best * 2 > valid else 0
    contest = {"outputs": [keccak(b"%d" % results.get(i, -1)) for i in range(5)], "counts": [1] * 5,
               "present": present, "slashed": 0, "provisional": provisional, "contestedAt": w.now, "locks": [1] * 5}
    w.emit("JobContested", contest=contest)


def apply(w: World, who: str, a: Action, seat: int | None = None) -> None:
    """The model contract executes `a` (already checked by `allowed`)."""
    s, kind = w.state, a.kind
    if kind == "expire":
        w.emit("JobSettled", outcome=3, present=0, paid=[0] * 5, slashMask=0, refund=0)
    elif kind == "settle":
        conclude(w, {i: w.outputs[i] for i in w.held})
        c = w.state.contest
        if c is not None and w.query_disputes and c.present & ~c.provisional and w.fee >= w.params.min_jury_fee:
            w.emit("DisputeOpened", disputer=CONSUMER, bond=w.fee, request=b"{}")
            if not w.dies_before_draw:
                apply(w, "consumer", Action("draw_jury", "the query draws its jury"))
    elif kind == "commit":
        w.keepers[seat].committed = True
        w.emit("ResultCommitted", seat=seat, provider=SEATS[seat], commitment=keccak(b"c"))
    elif kind == "reveal":
        w.keepers[seat].revealed = True
        w.emit("ResultRevealed", seat=seat, provider=SEATS[seat], outputHash=keccak(b"o"), tokenCount=1)
    elif kind == "finalize":
        conclude(w, {i: w.outputs[i] for i in s.revealed})
    elif kind == "dispute":
        w.keepers[seat].disputed = True
        w.emit("DisputeOpened", disputer=SEATS[seat], bond=w.fee, request=b"{}")
    elif kind == "draw_jury":
        jurors = JURORS if w.jury_possible else [ZERO_ADDRESS] * 3
        w.emit("JuryDrawn", jurors=jurors)
        w.duties = {j: Duty() for j in JURORS if w.jury_possible and j in w.jurors_present}
    elif kind == "post_evidence":
        w.emit("EvidencePosted", seat=seat, textHash=keccak(b"t"), tokens=b"\x00\x00\x00\x01")
    elif kind == "commit_vote":
        w.duties[who].committed = True
        w.emit("VoteCommitted", juror=who)
    elif kind == "reveal_vote":
        w.duties[who].revealed = True
        w.emit("VoteRevealed", juror=who, verdicts=0)
    elif kind == "resolve":
        w.emit("JobSettled", outcome=1, present=s.contest.present, paid=[0] * 5, slashMask=0, refund=0)


# ------------------------------------------------------------------------------ the parties


def choices(w: World) -> list[tuple[str, Action, int | None]]:
    """Every present party's policy, now."""
    s, p = w.state, w.params
    out: list[tuple[str, Action, int | None]] = []
    if w.consumer:
        out.append(("consumer", consumer_action(s, w.held, p, w.now, w.block), None))
    for seat, claim in w.keepers.items():
        out.append((f"seat {seat}", seat_action(s, claim, p, w.now, w.block, w.disputes[seat]), seat))
    for juror, duty in w.duties.items():
        a = juror_action(s, duty, p, w.now)
        if a.kind == "judge":  # CourtKeeper: judge (a missing evidence is HARD), then ask again
            assert s.contest is not None
            duty.verdicts = {i: 0 if i in s.evidence else 2 for i in s.contest.seats(s.contest.present)}
            a = juror_action(s, duty, p, w.now)
            assert a.kind == "commit_vote", a
        out.append((juror, a, None))
    return out


def check(w: World, who: str, a: Action, seat: int | None) -> None:
    s = w.state
    if a.kind == "wait":
        assert a.at == 0 or a.at > w.now, (who, a, w.now)
    elif a.kind != "closed":
        assert allowed(w, who, a, seat), (f"{who} chose {a} at t+{w.now - T0}, block {w.block + 1}", w.log,
                                          s.contest, s.dispute_block, s.jury_at, Deadlines.of(s, w.params))


def play(w: World, data) -> None:
    """Act or let time pass, step by step, checking every choice, until the job closes."""
    horizon = w.params.delivery_window + w.params.claim_window + w.params.reveal_window + w.params.dispute_window \
        + 3 * w.params.court_phase
    idle = 0  # a party may be slow to act, not absent for ever once present
    for _ in range(400):
        if w.state.closed:
            return
        options = choices(w)
        for who, a, seat in options:
            check(w, who, a, seat)
        acting = [(who, a, seat) for who, a, seat in options if a.kind not in ("wait", "closed")]
        idle = idle + 1 if acting else 0
        if acting and (idle > 3 or data.draw(st.booleans(), label="act now")):
            idle = 0
            who, a, seat = acting[data.draw(st.integers(0, len(acting) - 1), label="who")]
            w.log.append(f"t+{w.now - T0} b{w.block + 1} {who}: {a.kind}")
            apply(w, who, a, seat)
            if a.kind == "dispute" and not w.dies_before_draw:  # ClaimKeeper draws the jury next
                follow = Action("draw_jury", "jury drawn")
                check(w, who, follow, seat)
                apply(w, who, follow, seat)
            continue
        ats = [a.at for _, a, _ in options if a.kind == "wait" and a.at > w.now]
        jump = data.draw(st.sampled_from(["next", "small", "large"]), label="jump")
        if jump == "next" and ats:
            w.now = min(ats)
        else:
            w.now += data.draw(st.integers(1, horizon if jump == "large" else 60), label="dt")
        w.block += data.draw(st.integers(1, DRAW_WINDOW + 2), label="blocks")
    raise AssertionError(f"the job did not close: {w.log}")


# ------------------------------------------------------------------------------ the job, drawn or not

windows = st.integers(1, 3_600)
params = st.builds(MarketParams, delivery_window=windows, claim_window=windows, reveal_window=windows,
                   dispute_window=windows, court_phase=windows, min_jury_fee=st.sampled_from([1, 300, 10**9]))


@st.composite
def worlds(draw, drawn: bool = True) -> World:
    p = draw(params)
    n = draw(st.integers(3, 5)) if drawn else 0
    served = draw(st.sets(st.integers(0, n - 1))) if n else set()
    outputs = {i: draw(st.integers(0, 2)) for i in served}
    keepers = {i: SeatClaim(i) for i in draw(st.sets(st.sampled_from(sorted(served)))) } if served else {}
    w = World(p, n, outputs, held=draw(st.sets(st.sampled_from(sorted(served)))) if served else set(),
              consumer=draw(st.booleans()) if drawn else True, keepers=keepers,
              disputes={i: draw(st.booleans()) for i in keepers}, jury_possible=draw(st.booleans()),
              jurors_present=draw(st.sets(st.sampled_from(JURORS))), fee=100 * 3,
              query_disputes=draw(st.booleans()), dies_before_draw=draw(st.booleans()))
    w.emit("JobOpened", consumer=CONSUMER, modelHash=keccak(b"m"), slot=0, group=b"\x00" * 32,
           promptHash=keccak(b"{}"), maxTokens=100, priceCap=3)
    if drawn:
        w.block += draw(st.integers(0, DRAW_WINDOW - 1))
        w.emit("SeatsDrawn", seed=keccak(b"seed"), drawnAt=w.now, seats=SEATS[:3], prices=[3] * 3)
        for i in range(3, n):
            w.emit("SeatAdded", seat=i, provider=SEATS[i], price=3)
    return w


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.data())
def test_a_drawn_job_closes_and_nobody_acts_late(w, data):
    if not w.consumer and not w.keepers:
        w.consumer = True  # nobody at all holds anything: the job waits for its consumer
    play(w, data)
    assert w.state.closed


@settings(max_examples=100, deadline=None)
@given(worlds(drawn=False), st.data())
def test_an_undrawn_job_expires_after_its_draw_window(w, data):
    play(w, data)
    s = w.state
    assert s.closed and s.settled["outcome"] == 3 and s.job.drawn_at == 0
    expired = next(e for e in w.events if e.name == "JobSettled")
    assert expired.block_number > s.job.open_block + DRAW_WINDOW


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.data())
def test_without_the_consumer_a_served_seat_is_paid_or_the_job_still_closes(w, data):
    """The consumer walked away: the seats' keepers alone commit, reveal, finalize, dispute, draw
    the jury, publish evidence and resolve."""
    w.consumer = False
    if not w.keepers:
        w.keepers = {0: SeatClaim(0)}
        w.outputs.setdefault(0, 0)
        w.disputes[0] = True
    play(w, data)
    assert w.state.closed


# ------------------------------------------------------------------------------ the edges, by hand


def contested_world(p: MarketParams, provisional: int = 0b011) -> World:
    w = World(p, 3, {0: 0, 1: 0, 2: 1}, held={0, 1, 2}, consumer=True, keepers={2: SeatClaim(2)},
              disputes={2: True}, jury_possible=True, jurors_present=set(JURORS), fee=300)
    w.emit("JobOpened", consumer=CONSUMER, modelHash=keccak(b"m"), slot=0, group=b"\x00" * 32,
           promptHash=keccak(b"{}"), maxTokens=100, priceCap=3)
    w.emit("SeatsDrawn", seed=keccak(b"seed"), drawnAt=w.now, seats=SEATS[:3], prices=[3] * 3)
    conclude(w, w.outputs)
    assert w.state.contest is not None and w.state.contest.provisional == provisional
    return w


def test_the_jury_is_never_drawn_in_the_block_after_its_window():
    """At the window's last latest block a draw would be mined one block late: resolve instead
    (both the consumer and the seat). Before it, draw; in the dispute's own block, wait."""
    p = MarketParams()
    w = contested_world(p)
    w.emit("DisputeOpened", disputer=CONSUMER, bond=300, request=b"{}")
    d = Deadlines.of(w.state, p)
    claim = SeatClaim(2)
    for block, kind in ((d.jury_last_block - DRAW_WINDOW, "wait"), (d.jury_last_block - DRAW_WINDOW + 1, "draw_jury"),
                        (d.jury_last_block - 1, "draw_jury"), (d.jury_last_block, "resolve")):
        w.block = block
        for a in (consumer_action(w.state, w.held, p, w.now, block), seat_action(w.state, claim, p, w.now, block)):
            assert a.kind == kind, (block, a)
            check(w, "consumer", a, 2)


def test_the_seat_keeper_disputes_a_provisional_loss_only_when_a_jury_can_be_paid():
    p = MarketParams(min_jury_fee=300)
    w = contested_world(p)
    s = w.state
    assert seat_action(s, SeatClaim(2), p, w.now, w.block).kind == "dispute"
    assert seat_action(s, SeatClaim(2), p, w.now, w.block, dispute=False).kind == "wait"
    assert seat_action(s, SeatClaim(2, disputed=True), p, w.now, w.block).kind == "wait"
    assert seat_action(s, SeatClaim(0), p, w.now, w.block).kind == "wait"  # paid provisionally
    dear = MarketParams(min_jury_fee=301)
    assert seat_action(s, SeatClaim(2), dear, w.now, w.block).kind == "wait"
    end = Deadlines.of(s, p).dispute_end
    assert seat_action(s, SeatClaim(2), p, end, w.block).kind == "resolve"


def test_deadlines_follow_the_contract():
    p = MarketParams(delivery_window=10, claim_window=20, reveal_window=40, dispute_window=80, court_phase=160)
    w = contested_world(p)
    w.emit("DisputeOpened", disputer=CONSUMER, bond=300, request=b"{}")
    dispute_block = w.block
    w.now += 5
    w.emit("JuryDrawn", jurors=JURORS)
    d = Deadlines.of(w.state, p)
    assert (d.delivery_end, d.claim_end, d.reveal_end) == (T0 + 10, T0 + 30, T0 + 70)
    assert (d.finalize_from(False), d.finalize_from(True)) == (T0 + 30, T0 + 70)
    assert d.draw_last_block == w.state.job.open_block + DRAW_WINDOW
    assert d.dispute_end == T0 + 80 and d.jury_last_block == dispute_block + DRAW_WINDOW
    jury = T0 + 5
    assert d.evidence_end == jury + 160 and d.vote_commit == (jury + 160, jury + 320)
    assert d.vote_reveal == (jury + 320, jury + 480) and d.court_end == jury + 480 and d.court_length == 480
    with pytest.raises(ValueError):
        _ = Deadlines(p, w.state.job).dispute_end  # no contest given: no dispute window


def test_a_seat_whose_commit_was_mined_but_not_recorded_still_reveals():
    """A keeper killed after its commit was mined but before its claim file said so: the chain's
    ResultCommitted counts, so it reveals (its salt was saved before the commit was sent) instead
    of leaving its committed seat unrevealed, which finalize would slash."""
    p = MarketParams()
    w = World(p, 3, {0: 0, 1: 0, 2: 0}, held={0, 1}, consumer=False, keepers={2: SeatClaim(2)},
              disputes={}, jury_possible=True, jurors_present=set(), fee=300)
    w.emit("JobOpened", consumer=CONSUMER, modelHash=keccak(b"m"), slot=0, group=b"\x00" * 32,
           promptHash=keccak(b"{}"), maxTokens=100, priceCap=3)
    w.emit("SeatsDrawn", seed=keccak(b"seed"), drawnAt=w.now, seats=SEATS[:3], prices=[3] * 3)
    d = Deadlines(p, w.state.job)
    w.now = d.delivery_end
    w.emit("ResultCommitted", seat=2, commitment=keccak(b"c"))
    forgot = SeatClaim(2, committed=False)  # the claim file never recorded the commit
    assert seat_action(w.state, forgot, p, d.claim_end, w.block).kind == "reveal"
    assert seat_action(w.state, forgot, p, d.claim_end - 1, w.block).kind == "wait"
    w.emit("ResultRevealed", seat=2, outputHash=keccak(b"o"), tokenCount=3)
    assert seat_action(w.state, forgot, p, d.claim_end + 1, w.block).kind == "wait"
