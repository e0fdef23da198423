"""Reputation: the documented score (docs/LEDGER.md), decay, and the consumer's choice of three.

The selection scenario runs on real jobs: providers on Anvil answer honestly, lie (and are slashed)
or keep timing out (this node's observations), the indexer fills the ledger (SQLite and
PostgreSQL), and `Reputation.rank_providers` must stop choosing the liar and the flaky one while
still giving a newcomer a chance.
"""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Reputation, ReputationPolicy, open_ledger
from ledger.indexer import Indexer
from ledger.reputation import DEFAULT_POLICY, Evidence, Score, decay, rank, score
from mesh.keys import dev_account
from mesh.market import ResultClaim
from tests.conftest import FUNDS, MODEL, PRICE, STAKE
from tests.pg import ledger_url, pg_cluster, pg_url  # noqa: F401 — fixtures

HL = DEFAULT_POLICY.half_life_s
A = [f"0x{i:040x}" for i in range(1, 12)]


def ev(provider: str, t: float = 0.0, **counts: float) -> Evidence:
    e = Evidence(provider, HL, t)
    e.add(t, **counts)
    return e


# ------------------------------------------------------------------------------ the score

def test_a_newcomer_starts_optimistic_but_uncertain():
    s = score(A[0], None, 0.0)
    assert s.reliability == pytest.approx(0.75) and s.alpha + s.beta == 4 and not s.proven
    assert s.latency_ms == DEFAULT_POLICY.prior_latency_ms
    # Four real outcomes already outweigh the prior, either way.
    assert score(A[0], ev(A[0], agreed=4), 0.0).reliability > 0.85
    assert score(A[0], ev(A[0], timeouts=2), 0.0).reliability < 0.5


def test_a_slash_weighs_ten_failures_and_decays():
    slashed = score(A[0], ev(A[0], agreed=30, slashed=1), 0.0)
    honest = score(A[1], ev(A[1], agreed=30), 0.0)
    assert slashed.beta == pytest.approx(1 + 10) and slashed.reliability < 0.76 < 0.96 < honest.reliability
    later = score(A[0], ev(A[0], agreed=30, slashed=1), 3 * HL)  # three half-lives later
    assert later.beta == pytest.approx(1 + 10 / 8) and later.alpha == pytest.approx(3 + 30 / 8)


def test_latency_factor():
    fast = score(A[0], ev(A[0], latency_sum=5 * 100.0, latency_weight=5), 0.0)
    slow = score(A[1], ev(A[1], latency_sum=5 * 4000.0, latency_weight=5), 0.0)
    assert fast.latency_ms == pytest.approx((1000 + 500) / 6)
    assert fast.latency_factor == pytest.approx(1 / (1 + 250 / 2000)) and slow.latency_factor < 0.4


def test_decay_halves_per_half_life():
    assert decay(0, HL) == 1 and decay(HL, HL) == pytest.approx(0.5) and decay(-5, HL) == 1
    e = ev(A[0], 100.0, agreed=8)
    assert e.as_of(100.0 + 2 * HL).agreed == pytest.approx(2)
    assert e.as_of(50.0).agreed == 8  # reading at an earlier time never inflates evidence


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10 * HL), st.sampled_from(["agreed", "slashed", "timeouts", "missing"])),
                min_size=1, max_size=30),
       st.randoms(use_true_random=False))
def test_evidence_does_not_depend_on_arrival_order(events, rnd):
    """Chain events and local observations arrive interleaved and out of order: same counters."""
    in_order = Evidence(A[0], HL, events[0][0])
    for t, kind in sorted(events):
        in_order.add(t, **{kind: 1.0})
    shuffled = list(events)
    rnd.shuffle(shuffled)
    any_order = Evidence(A[0], HL, shuffled[0][0])
    for t, kind in shuffled:
        any_order.add(t, **{kind: 1.0})
    end = 11 * HL
    a, b = in_order.as_of(end), any_order.as_of(end)
    for k in ("agreed", "slashed", "timeouts", "missing"):
        assert getattr(a, k) == pytest.approx(getattr(b, k), rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------------------ ranking

def scores_of(evidence: dict[str, Evidence], now: float = 0.0) -> dict[str, Score]:
    return {p: score(p, evidence.get(p), now) for p in evidence}


def test_ranking_is_deterministic_for_a_seed():
    evs = {p: ev(p, agreed=5 + i) for i, p in enumerate(A[:6])}
    prices = {p: PRICE for p in A[:6]}
    first = [r.provider for r in rank(scores_of(evs), prices, seed=1)]
    assert first == [r.provider for r in rank(scores_of(dict(reversed(evs.items()))), prices, seed=1)]
    assert any([r.provider for r in rank(scores_of(evs), prices, seed=s)][:3] != first[:3] for s in range(2, 12))


def test_reliability_outweighs_a_discount():
    """A provider slashed once in thirty jobs rarely wins a place by charging a third less."""
    evs = {A[0]: ev(A[0], agreed=30), A[1]: ev(A[1], agreed=30), A[2]: ev(A[2], agreed=30),
           A[3]: ev(A[3], agreed=30, slashed=1)}
    prices = {A[0]: 12, A[1]: 12, A[2]: 12, A[3]: 8}
    picks = [r.provider for s in range(200) for r in rank(scores_of(evs), prices, seed=s)[:3]]
    assert picks.count(A[3]) <= 10  # of 200 jobs; each honest provider serves ~all of them
    assert min(picks.count(p) for p in A[:3]) >= 190


def test_at_most_one_unproven_provider_per_job():
    evs = {p: ev(p, agreed=10) for p in A[:3]} | {p: ev(p) for p in A[3:9]}
    prices = {p: PRICE for p in evs} | {p: 1 for p in A[3:9]}  # newcomers undercut everyone
    for s in range(100):
        top = rank(scores_of(evs), prices, seed=s)[:3]
        assert sum(not r.score.proven for r in top) <= 1
    # Without enough proven providers, a job with two newcomers beats no job.
    only_new = {p: ev(p) for p in A[3:6]} | {A[0]: ev(A[0], agreed=10)}
    assert len(rank(scores_of(only_new), prices, seed=0)[:3]) == 3


def test_bad_prices_are_refused():
    with pytest.raises(ValueError, match="positive integer price"):
        rank(scores_of({A[0]: ev(A[0])}), {A[0]: 0}, seed=0)
    with pytest.raises(ValueError, match="positive integer price"):
        rank(scores_of({A[0]: ev(A[0])}), {}, seed=0)


# ------------------------------------------------------------------------------ on real jobs

def _sign(m, job_id, out, count, acct):
    return ResultClaim(job_id, out, count).sign(acct, m.chain.chain_id, m.chain.market.address)


@pytest.fixture
def world(market):
    """Honest P0, P1, P2 and dev:8; liar P3; flaky dev:9 (delivers, but times out on this node);
    newcomer dev:7 (registered and staked, never served)."""
    m = market
    extra = [dev_account(i) for i in (7, 8, 9)]
    for i, a in enumerate(extra):
        if a.address != m.outsider.address:
            m.chain.transact(m.deployer, m.chain.token.functions.mint(a.address, FUNDS))
        m.mc.register(a, MODEL, keccak(b"extra-%d" % i), PRICE)
        m.mc.stake(a, STAKE)
    newcomer, honest4, flaky = extra
    honest = [*m.providers[:3], honest4]
    liar = m.providers[3]
    good, bad = keccak(b"the answer"), keccak(b"a lie")
    rounds = [(honest[0], honest[1], honest[2]), (honest[1], honest[2], honest[3]), (honest[2], honest[3], honest[0]),
              (honest[3], honest[0], liar), (honest[0], honest[1], liar), (honest[1], honest[2], flaky),
              (honest[2], honest[3], flaky), (honest[3], honest[0], flaky), (honest[0], honest[1], honest[3])]
    for three in rounds:
        job_id, job, _ = m.open(providers=[a.address for a in three])
        m.mc.settle(m.consumer, job_id, job, [_sign(m, job_id, bad if a is liar else good, 25, a) for a in three])
    return dict(m=m, honest=[a.address for a in honest], liar=liar.address, flaky=flaky.address,
                newcomer=newcomer.address)


def test_liars_and_timeouts_stop_being_chosen_newcomers_get_a_chance(world, ledger_url):  # noqa: F811
    w, m = world, world["m"]
    with open_ledger(ledger_url) as led:
        Indexer(led, m.chain).sync()
        now = float(m.now())
        for i in range(6):  # this node keeps seeing the flaky provider time out
            led.record_observation(w["flaky"], "timeout", at=now - 60 * i)
        for p in w["honest"]:
            led.record_observation(p, "first_token", 300.0, at=now)
        candidates = [p.address for p in led.providers(model_hash=MODEL, registered=True)]
        assert set(candidates) == {*w["honest"], w["liar"], w["flaky"], w["newcomer"]}
        prices = {p.address: p.price for p in led.providers(registered=True)}
        rep = Reputation(led)
        picks: dict[str, int] = {}
        first_new = None
        for s in range(120):
            chosen = rep.choose(candidates, prices, now, seed=s)
            assert len(set(chosen)) == 3
            for p in chosen:
                picks[p] = picks.get(p, 0) + 1
            if w["newcomer"] in chosen and first_new is None:
                first_new = s
        assert picks.get(w["liar"], 0) == 0 and picks.get(w["flaky"], 0) == 0
        assert all(picks.get(p, 0) >= 40 for p in w["honest"])
        assert first_new is not None and first_new < 30, "a newcomer must get a chance within 30 selections"
        assert 3 <= picks[w["newcomer"]] <= 40

        # Evidence decays: months later the liar is a stranger again and may be tried once more.
        later = now + 20 * HL
        tried = sum(w["liar"] in rep.choose(candidates, prices, later, seed=s) for s in range(120))
        assert tried > 0

        # The cached scores agree with what the ranking used.
        scores = rep.refresh(now)
        cached = led.evidence()
        assert cached[w["liar"]].score == pytest.approx(scores[w["liar"]].score)
        assert scores[w["liar"]].score < scores[w["flaky"]].score < min(scores[p].score for p in w["honest"])


def test_another_half_life_rebuilds_the_evidence(world, tmp_path):
    w, m = world, world["m"]
    with open_ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as led:
        Indexer(led, m.chain).sync()
        now = float(m.now())
        led.record_observation(w["flaky"], "timeout", at=now - 3600)
        incremental = led.evidence()  # folded in as events were indexed and observed
        default = Reputation(led).scores([w["liar"], w["flaky"]], now + 86400)
        short = Reputation(led, ReputationPolicy(half_life_s=3600.0)).scores([w["liar"], w["flaky"]], now + 86400)
        assert all(e.half_life_s == 3600.0 for e in led.evidence().values())
        # A day is 24 one-hour half-lives: with the short memory the slash is all but forgotten.
        assert short[w["liar"]].beta == pytest.approx(1.0, abs=1e-3)
        assert default[w["liar"]].beta > 10
        # Back to the default: counting everything anew gives what folding it in as it came gave.
        Reputation(led).scores(None, now)
        rebuilt = led.evidence()
        assert set(rebuilt) == set(incremental)
        for p, e in rebuilt.items():
            assert e.as_of(now).counters() == pytest.approx(incremental[p].as_of(now).counters())
            assert e.jobs == incremental[p].jobs
