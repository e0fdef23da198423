"""Evidence: a provider's decayed counters (proven work, slashes, jury failures, this node's own
failures and latencies), the input of its reputation score (ledger/reputation.py) and what the
ledger stores per provider.

Each piece of evidence weighs 2^(-age / half_life): a provider can recover from an old failure and
cannot live off an old record. Which outcome is worth what (and when it is worth nothing) is decided
in ledger/outcomes.py; this module only keeps the sums. A leaf module: the store, the SQL
implementation, the outcome rules and the reputation all use it, and it uses none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: Decayed counters of `Evidence`, in the order the reputation table stores them (docs/LEDGER.md):
#:   agreed            anchored agreements in the open market, weighted by the work done
#:   passed            anchored jury passes, weighted the same way
#:   slashed           stake burned: a jury's hard fail, a provable overclaim, a commitment never revealed
#:   failed            a jury's soft fail (unpaid, not slashed)
#:   minority          outvoted by a provisional majority that this node trusts (weak: no jury looked)
#:   missing           this node asked the seat for a job's answer and got none, and the chain shows no
#:                     result of that seat either
#:   timeouts, connect_failures, latency_sum, latency_weight: this node's own observations
COUNTERS: tuple[str, ...] = (
    "agreed", "passed", "slashed", "failed", "minority", "missing", "timeouts", "connect_failures",
    "latency_sum", "latency_weight",
)
#: Two weeks: long enough that a provider's record outlives a restart or a quiet weekend, short
#: enough that one bad day is mostly forgotten after a month.
DEFAULT_HALF_LIFE_S = 14 * 24 * 3600.0
#: Decayed positive evidence (agreed + passed) from which a provider is "proven": it then vouches
#: for the providers it agrees with (ledger/outcomes.py). Three full jobs, a few days old at most.
PROVEN_AFTER = 3.0
#: A slash weighs this much less than a full one before a proven provider is trusted again: one
#: half-life after it.
SLASH_FORGIVEN_BELOW = 0.5


def decay(age_s: float, half_life_s: float) -> float:
    """Weight of evidence `age_s` old: 1 now, 1/2 after one half-life. Never above 1."""
    return 1.0 if age_s <= 0 else 2.0 ** (-age_s / half_life_s)


@dataclass
class Evidence:
    """A provider's decayed counters as of `ref_time` (unix seconds)."""

    provider: str
    half_life_s: float
    ref_time: float
    agreed: float = 0.0
    passed: float = 0.0
    slashed: float = 0.0
    failed: float = 0.0
    minority: float = 0.0
    missing: float = 0.0
    timeouts: float = 0.0
    connect_failures: float = 0.0
    latency_sum: float = 0.0
    latency_weight: float = 0.0
    #: Undecayed count of settled seats, for display.
    jobs: int = 0
    score: float | None = field(default=None, compare=False)
    scored_at: float | None = field(default=None, compare=False)

    def add(self, at: float, **amounts: float) -> None:
        """Fold in evidence observed at `at` (a negative amount takes back what was folded in at
        that time); events may arrive out of time order."""
        unknown = set(amounts) - set(COUNTERS)
        if unknown:
            raise ValueError(f"unknown evidence counters {sorted(unknown)}")
        if at > self.ref_time:
            # Move the reference forward: everything held so far ages by (at - ref_time).
            f = decay(at - self.ref_time, self.half_life_s)
            for name in COUNTERS:
                setattr(self, name, getattr(self, name) * f)
            self.ref_time = at
            weight = 1.0
        else:
            weight = decay(self.ref_time - at, self.half_life_s)
        for name, value in amounts.items():
            setattr(self, name, getattr(self, name) + value * weight)

    def as_of(self, now: float) -> Evidence:
        """A copy decayed to `now` (a `now` before ref_time reads the counters as they are)."""
        f = decay(now - self.ref_time, self.half_life_s)
        return replace(self, ref_time=max(now, self.ref_time), **{n: getattr(self, n) * f for n in COUNTERS})

    def counters(self) -> dict[str, float]:
        return {n: getattr(self, n) for n in COUNTERS}

    def proven(self, at: float, threshold: float = PROVEN_AFTER) -> bool:
        """Enough recent proven work (agreed + passed, decayed to `at`) and no recent slash."""
        f = decay(at - self.ref_time, self.half_life_s)  # as_of(at), without the copy: the indexer asks often
        return (self.agreed + self.passed) * f >= threshold and self.slashed * f < SLASH_FORGIVEN_BELOW
