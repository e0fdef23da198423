"""Reputation: a score per provider from decayed evidence, the order the consumer shows providers
in, and whether the evidence doubts an outcome (to add a seat, or to dispute).

Evidence (ledger/evidence.py, its rules in ledger/outcomes.py): anchored agreements and jury passes
in the open market, weighted by the work done; slashes (a jury's hard fail, a provable lie, a
commitment never revealed); a jury's soft fail; being outvoted by a majority this node trusts; and
this node's own observations (missing answers, timeouts, connect failures, first-token latency).
Each piece weighs 2^(-age / half_life).

Score (docs/LEDGER.md has the reasons for each constant):
    alpha = prior_good + agreed + 2*passed
    beta  = prior_bad + 10*slashed + 3*failed + 0.5*minority + 2*missing + 2*timeouts
            + 1*connect_failures
    reliability    = alpha / (alpha + beta)                 (mean of Beta(alpha, beta))
    latency_ms     = decayed mean first-token latency, with a 1 s prior worth one sample
    latency_factor = 1 / (1 + latency_ms / 2000)
    score          = reliability * latency_factor
    proven         = agreed + passed >= 3 (decayed) and no recent slash

In protocol v2 nobody chooses who serves a job: the protocol draws the seats. Reputation orders
what a consumer shows (`rank`: a seeded Thompson draw, so an order can be replayed), and says when
the evidence doubts an outcome (`doubts`): nobody proven backs it while a proven provider is
against it. The consumer (consumer/selection.py) adds a seat or disputes on that.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from meshmarket.ledger.evidence import COUNTERS, DEFAULT_HALF_LIFE_S, PROVEN_AFTER, Evidence, decay  # noqa: F401 — re-exported
from meshmarket.ledger.records import checksum


class EvidenceSource(Protocol):
    """What reputation needs of a ledger (ledger.store.Ledger provides it)."""

    def evidence(self, providers: Iterable[str] | None = None) -> dict[str, Evidence]: ...

    def save_scores(self, scores: Mapping[str, float], at: float) -> None: ...

    def rebuild_reputation(self, half_life_s: float) -> int: ...


@dataclass(frozen=True)
class ReputationPolicy:
    """Weights of the score; each default carries its reason (docs/LEDGER.md)."""

    half_life_s: float = DEFAULT_HALF_LIFE_S
    #: Beta(3, 1): a newcomer starts at 0.75, optimistic, but worth only four observations, so a
    #: few real outcomes outweigh it either way.
    prior_good: float = 3.0
    prior_bad: float = 1.0
    #: A jury pass is an agreement a jury checked token by token: worth two.
    weight_passed: float = 2.0
    #: A slash is a proven wrong answer (or a withheld claim) that cost the provider its lock: ten
    #: ordinary failures.
    weight_slashed: float = 10.0
    #: A soft fail: a jury found the answer wrong but not provably dishonest (unpaid, not slashed).
    weight_failed: float = 3.0
    #: Outvoted by a majority this node trusts, with no jury asked: a hint, not a proof.
    weight_minority: float = 0.5
    #: An answer this node asked for and never got (and the chain shows none either), or a local
    #: timeout: it cost the consumer a seat and a delay; twice a connect failure, which may be the
    #: network's fault.
    weight_missing: float = 2.0
    weight_timeout: float = 2.0
    weight_connect_failure: float = 1.0
    #: Unknown latency reads as one sample of 1 s: neither a bonus nor a penalty against the field.
    prior_latency_ms: float = 1000.0
    prior_latency_weight: float = 1.0
    #: The latency at which the factor is 1/2: a first token later than 2 s is a poor experience.
    latency_scale_ms: float = 2000.0
    #: Utility takes theta to this power, so reliability outweighs price: a provider whose draw is
    #: 0.75 needs to be ~7x cheaper to rank with a 0.97 one.
    reliability_weight: float = 4.0
    #: Price counts, but less than quality: half the price buys a factor of sqrt(2), not 2.
    price_weight: float = 0.5
    #: Decayed agreed + passed from which a provider is proven (and vouches for those it agrees
    #: with; the ledger anchors with ledger.evidence.PROVEN_AFTER).
    proven_after: float = PROVEN_AFTER


DEFAULT_POLICY = ReputationPolicy()


@dataclass(frozen=True)
class Score:
    provider: str
    alpha: float
    beta: float
    reliability: float
    latency_ms: float
    latency_factor: float
    score: float
    #: Decayed number of outcomes and observations behind the score.
    weight: float
    proven: bool
    jobs: int


@dataclass(frozen=True)
class Ranked:
    provider: str
    price: int
    score: Score
    #: Thompson draw from Beta(alpha, beta).
    sample: float
    utility: float


def score(provider: str, evidence: Evidence | None, now: float, policy: ReputationPolicy = DEFAULT_POLICY) -> Score:
    """The documented score of one provider at `now` (no evidence: the prior alone)."""
    e = evidence.as_of(now) if evidence is not None else Evidence(provider, policy.half_life_s, now)
    alpha = policy.prior_good + e.agreed + policy.weight_passed * e.passed
    beta = (policy.prior_bad + policy.weight_slashed * e.slashed + policy.weight_failed * e.failed
            + policy.weight_minority * e.minority + policy.weight_missing * e.missing
            + policy.weight_timeout * e.timeouts + policy.weight_connect_failure * e.connect_failures)
    latency = ((policy.prior_latency_ms * policy.prior_latency_weight + e.latency_sum)
               / (policy.prior_latency_weight + e.latency_weight))
    latency_factor = 1.0 / (1.0 + latency / policy.latency_scale_ms)
    reliability = alpha / (alpha + beta)
    weight = sum(getattr(e, c) for c in COUNTERS if not c.startswith("latency"))
    return Score(provider, alpha, beta, reliability, latency, latency_factor, reliability * latency_factor,
                 weight, e.proven(now, policy.proven_after), e.jobs)


def derive_seed(now: float, candidates: Iterable[str]) -> int:
    """A seed from the inputs, so an unseeded ranking is still a pure function of them."""
    h = hashlib.sha256(f"{int(now)}|{'|'.join(sorted(candidates))}".encode()).digest()
    return int.from_bytes(h[:8], "big")


def rank(scores: Mapping[str, Score], prices: Mapping[str, int], *, seed: int,
         policy: ReputationPolicy = DEFAULT_POLICY) -> list[Ranked]:
    """Order candidates best first: each draws theta ~ Beta(alpha, beta) from a generator seeded
    with `seed` (the same seed, the same order), and
        utility = theta^4 * latency_factor * (cheapest_price / price) ** 0.5."""
    if not scores:
        return []
    for p in scores:
        price = prices.get(p)
        if not isinstance(price, int) or isinstance(price, bool) or price <= 0:
            raise ValueError(f"candidate {p} has no positive integer price")
    cheapest = min(prices[p] for p in scores)
    rng = random.Random(seed)
    ranked = []
    for p in sorted(scores):  # draw in a fixed order: the same seed gives the same ranking
        s = scores[p]
        theta = rng.betavariate(s.alpha, s.beta)
        utility = (theta ** policy.reliability_weight * s.latency_factor
                   * (cheapest / prices[p]) ** policy.price_weight)
        ranked.append(Ranked(p, prices[p], s, theta, utility))
    ranked.sort(key=lambda r: (-r.utility, r.provider))
    return ranked


def doubts(scores: Mapping[str, Score], backing: Iterable[str], against: Iterable[str]) -> bool:
    """Whether the evidence doubts an outcome that `backing` supports and `against` opposes:
    nobody proven among its backers, somebody proven among its opponents. Unknown providers are
    unproven. Two unproven seats agreeing (possibly one operator's sybils) against a provider this
    node has seen do honest work is exactly what a jury is for."""
    def proven(p: str) -> bool:
        s = scores.get(p)
        return s is not None and s.proven

    return not any(proven(p) for p in backing) and any(proven(p) for p in against)


class Reputation:
    """Scores and ranks providers from a ledger's evidence under one policy."""

    def __init__(self, ledger: EvidenceSource, policy: ReputationPolicy = DEFAULT_POLICY) -> None:
        self.ledger = ledger
        self.policy = policy

    def _evidence(self, providers: Iterable[str] | None) -> dict[str, Evidence]:
        ev = self.ledger.evidence(providers)
        if any(not math.isclose(e.half_life_s, self.policy.half_life_s) for e in ev.values()):
            # The counters were decayed with another half-life: recompute them from the history.
            self.ledger.rebuild_reputation(self.policy.half_life_s)
            ev = self.ledger.evidence(providers)
        return ev

    def scores(self, providers: Iterable[str] | None, now: float) -> dict[str, Score]:
        """Scores of `providers` (None: every provider with evidence) at `now`."""
        wanted = None if providers is None else [_address(p) for p in providers]
        ev = self._evidence(wanted)
        keys = wanted if wanted is not None else list(ev)
        return {p: score(p, ev.get(p), now, self.policy) for p in keys}

    def rank_providers(self, candidates: Sequence[str], prices: Mapping[str, int], now: float, *,
                       seed: int | None = None) -> list[Ranked]:
        """Rank `candidates` (offering one model, with `prices` per token) best first at `now`.
        Deterministic given `seed` (default: derived from `now` and the candidates)."""
        cands = list(dict.fromkeys(_address(c) for c in candidates))
        norm_prices = {_address(p): v for p, v in prices.items()}
        scores = self.scores(cands, now)
        return rank(scores, norm_prices, seed=derive_seed(now, cands) if seed is None else seed, policy=self.policy)

    def refresh(self, now: float) -> dict[str, Score]:
        """Recompute every provider's score at `now` and cache it in the ledger."""
        scores = self.scores(None, now)
        self.ledger.save_scores({p: s.score for p, s in scores.items()}, now)
        return scores


_address = checksum
