"""What a settled job says about each of its seats, and what that is worth as evidence.

Pure functions of what the ledger indexed (JobSettled, the JobContested and the jury before it), so
the SQL writer, the reputation rebuild and the tests share one set of rules (docs/LEDGER.md,
"Seat outcomes" and "Reputation").

Seat outcomes (`SEAT_OUTCOMES`):
    agreed       every valid result agreed (the fast path); paid
    provisional  contested, not disputed (or the dispute was void): in the strict majority, paid
    minority     contested, not disputed: a valid result outside the provisional majority; unpaid
    unconfirmed  contested, not disputed, and no majority to compare with (a single valid result, a
                 tie, or a majority seat whose stake could not back its full lock); unpaid
    passed       judged by a jury: pass; paid
    soft_fail    judged: a jury majority for "soft or hard"; unpaid, not slashed
    hard_fail    judged: a jury majority for "hard", or the seat's evidence was never posted; slashed
    slashed      slashed without a jury: a signed token count above maxTokens, or a commitment never
                 revealed (the seat row's commitment/revealed columns tell which)
    missing      no result of the seat reached the chain (the consumer left it out after the claim
                 window, or nobody revealed); unpaid

Evidence: only outcomes that prove something count (`evidence_of`). Positive evidence (agreed,
provisional, passed) must be *anchored*: the job is this node's own (the protocol drew its committee
for a request this node made, and nobody can grind that), or someone who vouches for the seat (a
co-agreeing seat; a juror that revealed "pass" for it) was already proven. So providers that only
ever work among themselves (sybils, in a private group or in a pool nobody else serves) never
become proven, however many jobs they run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshmarket.mesh.market import HARD, OUTCOMES, PASS, SOFT

SEAT_OUTCOMES: tuple[str, ...] = (
    "agreed", "provisional", "minority", "unconfirmed", "passed", "soft_fail", "hard_fail", "slashed", "missing",
)
#: JobSettled.outcome names (JobMarket.Outcome).
JOB_OUTCOMES: tuple[str, ...] = OUTCOMES
#: A job's life: open (requested), drawn (seats drawn), contested (results disagreed), disputed (a
#: party asked for a jury), then settled (agreed, provisional or judged) or refunded (no valid result,
#: or never drawn and expired).
JOB_STATUSES: tuple[str, ...] = ("open", "drawn", "contested", "disputed", "settled", "refunded")

#: Which evidence counter each outcome feeds (ledger.evidence.COUNTERS); the others feed none.
COUNTER_OF: dict[str, str] = {
    "agreed": "agreed", "provisional": "agreed", "passed": "passed",
    "hard_fail": "slashed", "slashed": "slashed", "soft_fail": "failed", "minority": "minority",
}
#: A job that produced this many tokens counts as one full piece of work; a smaller one counts in
#: proportion, so 32 one-token jobs weigh what one real answer weighs.
FULL_JOB_TOKENS = 32
#: Zero group: the open market, where the protocol, not the providers, decides who serves together.
OPEN_MARKET = "0x" + "00" * 32


def bit(mask: int, i: int) -> bool:
    return bool(mask >> i & 1)


@dataclass(frozen=True)
class Settlement:
    """What the ledger knows of a job when JobSettled arrives; masks are bit sets of seats."""

    outcome: str
    seats: int
    present: int
    slash_mask: int
    paid: Sequence[int]
    #: JobContested's provisional majority (0 for a job that was never contested).
    provisional: int = 0
    #: Each seat's output hash, where known (contest or reveal); None elsewhere.
    outputs: Sequence[str | None] = ()
    #: The jury's verdict per seat ("pass", "soft", "hard"; None for a seat it did not judge).
    verdicts: Sequence[str | None] = ()


def tally(votes: Sequence[int | None], drawn: int, evidence: int, present: int) -> list[str | None]:
    """The jury's verdict per seat, as JobMarket._closeJudged decides it: `votes` are the revealed
    verdict words of the jurors (None: not revealed), `drawn` the number of jurors drawn."""
    need = drawn // 2 + 1
    out: list[str | None] = []
    for i in range(5):
        if not bit(present, i):
            out.append(None)
            continue
        marks = [(v >> (2 * i)) & 3 for v in votes if v is not None]
        hard = sum(m == HARD for m in marks)
        soft = sum(m == SOFT for m in marks)
        if not bit(evidence, i) or hard >= need:
            out.append("hard")
        elif hard + soft < need:
            out.append("pass")
        else:
            out.append("soft")
    return out


def seat_outcomes(s: Settlement) -> list[str]:
    """Each seat's outcome (see the module docstring). The event's masks and pays decide; the
    jury's tally only tells a soft fail from a pass when the seat's pay is 0 (0 tokens)."""
    outputs = list(s.outputs) + [None] * (5 - len(s.outputs))
    verdicts = list(s.verdicts) + [None] * (5 - len(s.verdicts))
    majority = {outputs[i] for i in range(5) if bit(s.provisional, i)}
    out = []
    for i in range(s.seats):
        if not bit(s.present, i):
            out.append("slashed" if bit(s.slash_mask, i) else "missing")
        elif s.outcome == "agreed":
            out.append("agreed")
        elif s.outcome == "judged":
            if bit(s.slash_mask, i):
                out.append("hard_fail")
            elif s.paid[i] > 0 or verdicts[i] == "pass":
                out.append("passed")
            else:
                out.append("soft_fail")
        elif bit(s.provisional, i):
            out.append("provisional")
        elif majority and outputs[i] not in majority:
            out.append("minority")
        else:
            out.append("unconfirmed")
    return out


def vouchers(outcomes: Sequence[str], providers: Sequence[str], juror_votes: Sequence[tuple[str, int | None]],
             ) -> list[tuple[str, ...]]:
    """Per seat, who could anchor its outcome by being proven: co-agreeing seats for an agreement,
    the jurors that revealed "pass" for it for a pass, the provisional majority for a minority."""
    out = []
    for i, o in enumerate(outcomes):
        if o in ("agreed", "provisional"):
            out.append(tuple(p for k, p in enumerate(providers) if k != i and outcomes[k] == o))
        elif o == "passed":
            out.append(tuple(j for j, v in juror_votes if v is not None and (v >> (2 * i)) & 3 == PASS))
        elif o == "minority":
            out.append(tuple(p for k, p in enumerate(providers) if outcomes[k] == "provisional"))
        else:
            out.append(())
    return out


def work_weight(tokens: int) -> float:
    return min(1.0, tokens / FULL_JOB_TOKENS) if tokens > 0 else 0.0


def evidence_of(outcome: str | None, *, group: str | None, tokens: int | None, paid: int | None,
                anchored: bool) -> tuple[str | None, float]:
    """(counter, amount) of reputation evidence one seat's outcome is worth.

    - agreed / provisional: the work done (`work_weight`), only in the open market, only for paid
      work (tokens > 0 and pay > 0), only when anchored;
    - passed: the same (a jury looked at the tokens);
    - minority: 1, only when anchored (a majority this node trusts disagreed): no jury proved it;
    - soft_fail: 1; hard_fail and slashed: 1 (stake burned: a proof, whoever else was in the job);
    - unconfirmed and missing: nothing. A seat left out of a settlement is the consumer's word;
      this node's own unanswered requests count instead (ledger.evidence "missing").
    """
    counter = COUNTER_OF.get(outcome or "")
    if counter is None:
        return None, 0.0
    if counter in ("agreed", "passed"):
        paid_work = (tokens or 0) > 0 and (paid or 0) > 0
        ok = group == OPEN_MARKET and anchored and paid_work
        return counter, work_weight(tokens or 0) if ok else 0.0
    if counter == "minority":
        return counter, 1.0 if anchored else 0.0
    return counter, 1.0
