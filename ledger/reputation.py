"""Reputation: a score per provider from decayed evidence, and the ranking the consumer selects by.

Evidence (what happened, decayed): from the chain, each settled job's outcome per provider
(agreed / dissent / missing / slashed) and each time a consumer replaced the provider; from this
node, connect failures, timeouts and first-token latencies (`Ledger.record_observation`). Each
piece of evidence weighs 2^(-age / half_life): a provider can recover from an old failure and
cannot live off an old record.

Score (docs/LEDGER.md has the full formula and the reasons for each constant):
    alpha = prior_good + agreed
    beta  = prior_bad + 10*slashed + 2*missing + 2*timeouts + 1*connect_failures
            + 1*replaced + 0.5*dissent
    reliability    = alpha / (alpha + beta)                 (mean of Beta(alpha, beta))
    latency_ms     = decayed mean first-token latency, with a 1 s prior worth one sample
    latency_factor = 1 / (1 + latency_ms / 2000)
    score          = reliability * latency_factor

Ranking for one job: every candidate draws theta ~ Beta(alpha, beta) from a seeded generator
(Thompson sampling: deterministic for a seed, so a selection can be replayed), and is ranked by
    utility = theta^4 * latency_factor * (cheapest_price / price) ** 0.5
A provider with a slash or a run of timeouts draws low, and the fourth power makes that outweigh
any discount, so it stops being chosen. One job in ten (drawn from the same seed) reserves a slot
for the best-drawing newcomer (unproven, nothing against it), so new providers get a chance even
among a thousand established ones. At most one unproven provider (fewer than 3 decayed agreements)
sits among the three chosen, so two newcomers, possibly one operator's Sybils, never form a job's
majority.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from ledger.evidence import COUNTERS, DEFAULT_HALF_LIFE_S, Evidence, decay  # noqa: F401 — re-exported
from ledger.records import checksum


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
    #: A slash is a proven wrong answer signed with the provider's key: ten ordinary failures.
    weight_slashed: float = 10.0
    #: A delivery that never came (on-chain missing result, or a local timeout) costs the consumer a
    #: replacement and a delay: twice a connect failure, which may be the network's fault.
    weight_missing: float = 2.0
    weight_timeout: float = 2.0
    weight_connect_failure: float = 1.0
    #: A replacement is one consumer's unproven claim; it counts, but no more than a connect failure.
    weight_replaced: float = 1.0
    #: Disagreement without a majority proves nobody wrong: half a failure, to each.
    weight_dissent: float = 0.5
    #: Unknown latency reads as one sample of 1 s: neither a bonus nor a penalty against the field.
    prior_latency_ms: float = 1000.0
    prior_latency_weight: float = 1.0
    #: The latency at which the factor is 1/2: a first token later than 2 s is a poor experience.
    latency_scale_ms: float = 2000.0
    #: Utility takes theta to this power, so reliability outweighs price: a provider whose draw is
    #: 0.75 (about one slash in thirty jobs) needs to be ~7x cheaper to tie with a 0.97 one.
    reliability_weight: float = 4.0
    #: Price counts, but less than quality: half the price buys a factor of sqrt(2), not 2.
    price_weight: float = 0.5
    #: One job in ten reserves a slot for the best-drawing newcomer (unproven, and no evidence
    #: against it), so new providers get traffic even among a thousand established ones.
    explore_rate: float = 0.1
    #: Fewer decayed agreements than this and a provider is unproven (see `max_unproven`).
    proven_after: float = 3.0
    #: At most one unproven provider per job, so unproven providers never form a majority.
    max_unproven: int = 1
    #: Providers per job (the market's three-way check).
    job_size: int = 3


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
    #: Chosen for the exploration slot of this job, not by utility.
    explored: bool = False


def score(provider: str, evidence: Evidence | None, now: float, policy: ReputationPolicy = DEFAULT_POLICY) -> Score:
    """The documented score of one provider at `now` (no evidence: the prior alone)."""
    e = evidence.as_of(now) if evidence is not None else Evidence(provider, policy.half_life_s, now)
    alpha = policy.prior_good + e.agreed
    beta = (policy.prior_bad + policy.weight_slashed * e.slashed + policy.weight_missing * e.missing
            + policy.weight_timeout * e.timeouts + policy.weight_connect_failure * e.connect_failures
            + policy.weight_replaced * e.replaced + policy.weight_dissent * e.dissent)
    latency = ((policy.prior_latency_ms * policy.prior_latency_weight + e.latency_sum)
               / (policy.prior_latency_weight + e.latency_weight))
    latency_factor = 1.0 / (1.0 + latency / policy.latency_scale_ms)
    reliability = alpha / (alpha + beta)
    weight = e.agreed + e.dissent + e.slashed + e.missing + e.replaced + e.timeouts + e.connect_failures
    return Score(provider, alpha, beta, reliability, latency, latency_factor, reliability * latency_factor,
                 weight, e.agreed >= policy.proven_after, e.jobs)


def derive_seed(now: float, candidates: Iterable[str]) -> int:
    """A seed from the inputs, so an unseeded ranking is still a pure function of them."""
    h = hashlib.sha256(f"{int(now)}|{'|'.join(sorted(candidates))}".encode()).digest()
    return int.from_bytes(h[:8], "big")


def rank(scores: Mapping[str, Score], prices: Mapping[str, int], *, seed: int,
         policy: ReputationPolicy = DEFAULT_POLICY) -> list[Ranked]:
    """Order candidates best first (see the module docstring); the first `job_size` are the pick."""
    if not scores:
        return []
    for p in scores:
        price = prices.get(p)
        if not isinstance(price, int) or isinstance(price, bool) or price <= 0:
            raise ValueError(f"candidate {p} has no positive integer price")
    cheapest = min(prices[p] for p in scores)
    rng = random.Random(seed)
    explore = rng.random() < policy.explore_rate
    ranked = []
    for p in sorted(scores):  # draw in a fixed order: the same seed gives the same ranking
        s = scores[p]
        theta = rng.betavariate(s.alpha, s.beta)
        utility = (theta ** policy.reliability_weight * s.latency_factor
                   * (cheapest / prices[p]) ** policy.price_weight)
        ranked.append(Ranked(p, prices[p], s, theta, utility))
    ranked.sort(key=lambda r: (-r.utility, r.provider))

    reserved = None
    if explore:
        prior = policy.prior_good / (policy.prior_good + policy.prior_bad)
        # Only newcomers nothing speaks against: a provider whose evidence already pulled it below
        # the prior (a slash, timeouts) is not explored, it has been tried.
        newcomers = [r for r in ranked if not r.score.proven and r.score.reliability >= prior - 1e-9]
        if newcomers:
            reserved = replace(newcomers[0], explored=True)
    top: list[Ranked] = [reserved] if reserved else []
    rest: list[Ranked] = []
    unproven = len(top)
    for r in ranked:
        if reserved is not None and r.provider == reserved.provider:
            continue
        if len(top) < policy.job_size and (r.score.proven or unproven < policy.max_unproven):
            top.append(r)
            unproven += not r.score.proven
        else:
            rest.append(r)
    if len(top) < policy.job_size:
        # Too few proven candidates to honour the limit: a job with two newcomers beats no job.
        need = policy.job_size - len(top)
        top += rest[:need]
        rest = rest[need:]
    top.sort(key=lambda r: (-r.utility, r.provider))
    return top + rest


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
        """Rank `candidates` (offering one model, with `prices` per token) best first for a job
        at `now`; take the first `policy.job_size`. Deterministic given `seed` (default: derived
        from `now` and the candidates)."""
        cands = list(dict.fromkeys(_address(c) for c in candidates))
        norm_prices = {_address(p): v for p, v in prices.items()}
        scores = self.scores(cands, now)
        return rank(scores, norm_prices, seed=derive_seed(now, cands) if seed is None else seed, policy=self.policy)

    def choose(self, candidates: Sequence[str], prices: Mapping[str, int], now: float, *,
               seed: int | None = None) -> list[str]:
        """The providers for one job: the first `job_size` of `rank_providers`."""
        return [r.provider for r in self.rank_providers(candidates, prices, now, seed=seed)[: self.policy.job_size]]

    def refresh(self, now: float) -> dict[str, Score]:
        """Recompute every provider's score at `now` and cache it in the ledger."""
        scores = self.scores(None, now)
        self.ledger.save_scores({p: s.score for p, s in scores.items()}, now)
        return scores


_address = checksum
