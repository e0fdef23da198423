"""Attack and fault scenarios against the real contracts on a real Anvil (see docs/THREAT_MODEL.md).

Every test starts from the same snapshot: four registered, staked providers P0..P3 offering MODEL
at PRICE, two funded consumers. Balances are asserted to the base unit.
"""

from __future__ import annotations

import json

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from contracts.deploy import deploy
from mesh.config import MarketParams
from mesh.errors import ContractReverted
from mesh.market import Job, ResultClaim, commitment, job_id_for
from tests.conftest import MODEL, OTHER_MODEL, PRICE, STAKE

OUT_A = keccak(b"output A")
OUT_B = keccak(b"output B")
OUT_C = keccak(b"output C")
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P = MarketParams()


def sign(m, job_id, out, count, acct, chain_id=None, market_addr=None):
    return ResultClaim(job_id, out, count).sign(acct, chain_id or m.chain.chain_id, market_addr or m.chain.market.address)


def reverts(name: str):
    """Expect a ContractReverted whose decoded custom error is `name`."""

    class _Ctx:
        def __enter__(self):
            return self

        def __exit__(self, et, ev, tb):
            assert et is ContractReverted, f"expected revert {name}, got {et and et.__name__}: {ev}"
            assert ev.name == name, f"expected {name}, got {ev.name}: {ev}"
            self.error = ev
            return True

    return _Ctx()


def lock(m, max_tokens, price=PRICE):
    return m.chain.registry.functions.lockFor(max_tokens, price).call()


def acct_state(m, who):
    return m.mc.account(who.address)


# ----------------------------------------------------------------------------- settlement outcomes

def test_three_agree_all_paid_rest_refunded(market):
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    before = [acct_state(m, p) for p in m.providers[:3]]
    assert [b["locked"] for b in before] == [lock(m, 100)] * 3
    results = [sign(m, job_id, OUT_A, 40, p) for p in m.providers[:3]]
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job_id, job, results))
    assert ev["outcome"] == 0 and list(ev["paid"]) == [400, 400, 400] and ev["slashMask"] == 0
    assert ev["refund"] == 3 * 100 * PRICE - 1200
    assert m.mc.credit(m.consumer.address) == ev["refund"]
    for p, b in zip(m.providers[:3], before):
        a = acct_state(m, p)
        assert a["owed"] == b["owed"] + 400 and a["locked"] == 0 and a["stake"] == STAKE
    assert not m.mc.is_open(job_id)


def test_two_agree_dissenter_slashed_and_unpaid(market):
    m = market
    supply = m.chain.token.functions.totalSupply().call()
    job_id, job, _ = m.open(max_tokens=100)
    results = [sign(m, job_id, OUT_A, 50, m.providers[0]), sign(m, job_id, OUT_B, 50, m.providers[1]),
               sign(m, job_id, OUT_A, 50, m.providers[2])]
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job_id, job, results))
    assert list(ev["paid"]) == [500, 0, 500] and ev["slashMask"] == 0b010
    assert ev["refund"] == 3000 - 1000
    liar = acct_state(m, m.providers[1])
    assert liar["stake"] == STAKE - lock(m, 100) and liar["owed"] == 0 and liar["locked"] == 0
    # Slashed stake is burned: neither the consumer nor the majority receives it.
    assert m.chain.token.functions.totalSupply().call() == supply - lock(m, 100)
    assert m.mc.credit(m.consumer.address) == 2000
    assert acct_state(m, m.providers[0])["owed"] == 500


def test_no_majority_full_refund_nobody_paid_or_slashed(market):
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    results = [sign(m, job_id, o, 50, p) for o, p in zip((OUT_A, OUT_B, OUT_C), m.providers[:3])]
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job_id, job, results))
    assert ev["outcome"] == 1 and list(ev["paid"]) == [0, 0, 0] and ev["slashMask"] == 0
    assert ev["refund"] == 3000 == m.mc.credit(m.consumer.address)
    assert all(acct_state(m, p)["stake"] == STAKE for p in m.providers[:3])


def test_same_hash_different_token_count_is_a_dissent(market):
    """An agreeing output hash with an inflated token count is an overcharge, not agreement."""
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    results = [sign(m, job_id, OUT_A, 50, m.providers[0]), sign(m, job_id, OUT_A, 99, m.providers[1]),
               sign(m, job_id, OUT_A, 50, m.providers[2])]
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job_id, job, results))
    assert list(ev["paid"]) == [500, 0, 500] and ev["slashMask"] == 0b010


def test_token_count_above_max_never_paid_and_slashed(market):
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    results = [sign(m, job_id, OUT_A, 101, p) for p in m.providers[:3]]
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job_id, job, results))
    assert list(ev["paid"]) == [0, 0, 0] and ev["slashMask"] == 0b111 and ev["refund"] == 3000


def test_payout_never_above_escrow(market):
    """Every provider claims the maximum: pay equals escrow exactly, the refund is zero."""
    m = market
    job_id, job, _ = m.open(max_tokens=77)
    results = [sign(m, job_id, OUT_A, 77, p) for p in m.providers[:3]]
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job_id, job, results))
    assert sum(ev["paid"]) == job.escrow and ev["refund"] == 0


# ----------------------------------------------------------------------------- signatures

def test_signature_replayed_on_another_job_refused(market):
    m = market
    job1, j1, _ = m.open()
    job2, j2, _ = m.open()
    stolen = [sign(m, job1, OUT_A, 10, p) for p in m.providers[:3]]
    replay = [ResultClaim(job2, r.output_hash, r.token_count, r.signature) for r in stolen]
    with reverts("BadSignature"):
        m.mc.settle(m.consumer, job2, j2, replay)


def test_signature_for_another_chain_refused(market):
    m = market
    job_id, job, _ = m.open()
    results = [sign(m, job_id, OUT_A, 10, p, chain_id=1) for p in m.providers[:3]]
    with reverts("BadSignature"):
        m.mc.settle(m.consumer, job_id, job, results)


def test_signature_for_another_contract_refused(market):
    m = market
    job_id, job, _ = m.open()
    results = [sign(m, job_id, OUT_A, 10, p, market_addr=m.chain.registry.address) for p in m.providers[:3]]
    with reverts("BadSignature"):
        m.mc.settle(m.consumer, job_id, job, results)


def test_malleable_signature_refused(market):
    """(r, n - s, v ^ 1) is the same signature in its other form: it must not be accepted."""
    m = market
    job_id, job, _ = m.open()
    results = [sign(m, job_id, OUT_A, 10, p) for p in m.providers[:3]]
    sig = results[0].signature
    s = int.from_bytes(sig[32:64], "big")
    flipped = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    assert ResultClaim(job_id, OUT_A, 10, flipped).signer(m.chain.chain_id, m.chain.market.address) == m.providers[0].address
    r, vs = flipped[:32], (((flipped[64] - 27) << 255) | (SECP256K1_N - s)) & ((1 << 256) - 1)
    raw = [(OUT_A, 10, r, vs.to_bytes(32, "big"))] + [x.as_abi() for x in results[1:]]
    with reverts("BadSignature"):
        m.chain.transact(m.consumer, m.chain.market.functions.settle(job_id, job.as_abi(), raw))


def test_zero_address_and_garbage_signatures_refused(market):
    m = market
    job_id, job, _ = m.open()
    good = [sign(m, job_id, OUT_A, 10, p).as_abi() for p in m.providers[:3]]
    for r, vs in ((b"\x00" * 32, b"\x01" * 32), (b"\xff" * 32, b"\x00" * 31 + b"\x01"), (b"\x01" * 32, b"\x00" * 32)):
        raw = [(OUT_A, 10, r, vs)] + good[1:]
        with reverts("BadSignature"):
            m.chain.transact(m.consumer, m.chain.market.functions.settle(job_id, job.as_abi(), raw))


def test_signature_of_another_provider_refused(market):
    m = market
    job_id, job, _ = m.open()
    results = [sign(m, job_id, OUT_A, 10, m.providers[1]), sign(m, job_id, OUT_A, 10, m.providers[1]),
               sign(m, job_id, OUT_A, 10, m.providers[2])]
    with reverts("BadSignature") as ctx:
        m.mc.settle(m.consumer, job_id, job, results)
    assert ctx.error.error_args == (0,)


# ----------------------------------------------------------------------------- opening a job

def test_provider_listed_twice_refused(market):
    m = market
    p = m.providers
    with reverts("DuplicateProvider"):
        m.open(providers=[p[0].address, p[1].address, p[0].address])


def test_unregistered_provider_refused(market):
    m = market
    with reverts("NotRegistered"):
        m.open(providers=[m.providers[0].address, m.providers[1].address, m.outsider.address])


def test_over_price_provider_refused(market):
    m = market
    m.mc.register(m.providers[2], MODEL, keccak(b"pricier"), PRICE + 1)
    with reverts("PriceAboveCap"):
        m.open(price_cap=PRICE)


def test_provider_of_another_model_refused(market):
    m = market
    m.mc.register(m.providers[2], OTHER_MODEL, keccak(b"other"), PRICE)
    with reverts("WrongModel"):
        m.open()


def test_provider_without_free_stake_refused(market):
    m = market
    p0 = m.providers[0]
    m.mc.request_unstake(p0, STAKE - lock(m, 100))  # leaves exactly one job's lock free
    m.open(max_tokens=100)
    with reverts("InsufficientFreeStake") as ctx:
        m.open(max_tokens=1)
    assert ctx.error.error_args == (p0.address, 0, lock(m, 1))


def test_consumer_cannot_be_its_own_provider(market):
    m = market
    with reverts("ConsumerIsProvider"):
        m.mc.open_job(m.providers[0], MODEL, keccak(b"p"), 10, PRICE, [p.address for p in m.providers[:3]])


def test_job_id_reuse_refused(market):
    m = market
    salt = b"\x07" * 32
    job_id, _, _ = m.open(salt=salt)
    assert job_id == job_id_for(m.consumer.address, salt)
    with reverts("JobExists"):
        m.open(salt=salt)


def test_max_tokens_bounds(market):
    m = market
    with reverts("BadMaxTokens"):
        m.open(max_tokens=0)
    with reverts("BadMaxTokens"):
        m.open(max_tokens=(1 << 20) + 1)


def test_insufficient_allowance_decoded(market):
    m = market
    m.chain.transact(m.outsider, m.chain.token.functions.approve(m.chain.registry.address, 5))
    with reverts("ERC20InsufficientAllowance") as ctx:
        m.open(consumer=m.outsider, approve=False)
    assert "approve" in str(ctx.error)


def test_open_pulls_exactly_the_escrow(market):
    m = market
    bal = m.chain.balance(m.consumer.address)
    _, job, _ = m.open(max_tokens=123)
    assert m.chain.balance(m.consumer.address) == bal - 123 * 3 * PRICE == bal - job.escrow
    m.mc.deposit(m.consumer, 10_000)
    bal = m.chain.balance(m.consumer.address)
    _, job, _ = m.open(max_tokens=100)  # paid from credit: no transfer
    assert m.chain.balance(m.consumer.address) == bal and m.mc.credit(m.consumer.address) == 10_000 - job.escrow


# ----------------------------------------------------------------------------- double spending

def test_double_settle_refused(market):
    m = market
    job_id, job, _ = m.open()
    results = [sign(m, job_id, OUT_A, 10, p) for p in m.providers[:3]]
    m.mc.settle(m.consumer, job_id, job, results)
    with reverts("JobNotOpen"):
        m.mc.settle(m.consumer, job_id, job, results)


def test_double_withdraw_earnings_refused(market):
    m = market
    job_id, job, _ = m.open()
    m.mc.settle(m.consumer, job_id, job, [sign(m, job_id, OUT_A, 10, p) for p in m.providers[:3]])
    bal = m.chain.balance(m.providers[0].address)
    m.mc.withdraw_earnings(m.providers[0])
    assert m.chain.balance(m.providers[0].address) == bal + 100
    with reverts("NothingOwed"):
        m.mc.withdraw_earnings(m.providers[0])


def test_double_withdraw_credit_refused(market):
    m = market
    m.mc.deposit(m.consumer, 500)
    bal = m.chain.balance(m.consumer.address)
    m.mc.withdraw_credit(m.consumer)
    assert m.chain.balance(m.consumer.address) == bal + 500
    with reverts("NothingToWithdraw"):
        m.mc.withdraw_credit(m.consumer)


def test_stake_thaws_then_withdraws_once(market):
    m = market
    p = m.providers[3]
    m.mc.request_unstake(p, 1000)
    ready = acct_state(m, p)["thaw_ready_at"]
    m.set_next_timestamp(ready - 1)
    with reverts("StillThawing"):
        m.mc.withdraw_stake(p)
    m.set_next_timestamp(ready)
    bal = m.chain.balance(p.address)
    m.mc.withdraw_stake(p)
    assert m.chain.balance(p.address) == bal + 1000
    with reverts("NothingThawing"):
        m.mc.withdraw_stake(p)


def test_double_finalize_refused(market):
    m = market
    job_id, job, _ = m.open()
    m.advance(P.settle_window + P.commit_window + P.reveal_window)
    m.mc.finalize(m.outsider, job_id, job)
    with reverts("JobNotOpen"):
        m.mc.finalize(m.outsider, job_id, job)


# ----------------------------------------------------------------------------- stake and slashing

def test_unstaking_cannot_dodge_a_slash(market):
    """A provider that lies and then tries to unstake everything still loses its job lock."""
    m = market
    liar = m.providers[1]
    job_id, job, _ = m.open(max_tokens=100)
    free = m.chain.registry.functions.freeStake(liar.address).call()
    with reverts("InsufficientFreeStake"):
        m.mc.request_unstake(liar, free + 1)
    m.mc.request_unstake(liar, free)
    results = [sign(m, job_id, OUT_A, 10, m.providers[0]), sign(m, job_id, OUT_B, 10, liar),
               sign(m, job_id, OUT_A, 10, m.providers[2])]
    m.mc.settle(m.consumer, job_id, job, results)
    a = acct_state(m, liar)
    assert a["stake"] == 0 and a["thawing"] == free  # the lock was slashed; the thawing part was never locked


def test_only_market_can_lock_release_or_slash(market):
    m = market
    reg = m.chain.registry.functions
    p3 = [p.address for p in m.providers[:3]]
    with reverts("OnlyMarket"):
        m.chain.transact(m.outsider, reg.openJobFunds(m.outsider.address, MODEL, PRICE, 10, p3))
    with reverts("OnlyMarket"):
        m.chain.transact(m.outsider, reg.closeJob(b"\x01" * 32, m.outsider.address, 10, p3, [PRICE] * 3, [0, 0, 0], 0b111))
    with reverts("OnlyMarket"):
        m.chain.transact(m.outsider, reg.swapProvider(m.outsider.address, MODEL, PRICE, 10, p3[0], PRICE, p3[1]))


def test_market_binds_once_and_only_by_deployer(market):
    m = market
    with reverts("MarketAlreadyBound"):
        m.chain.transact(m.deployer, m.chain.registry.functions.bindMarket(m.outsider.address))
    with reverts("NotDeployer"):
        m.chain.transact(m.outsider, m.chain.registry.functions.bindMarket(m.outsider.address))


def test_price_change_does_not_alter_an_open_job(market):
    m = market
    job_id, job, _ = m.open(max_tokens=100, price_cap=50)
    m.mc.register(m.providers[0], MODEL, keccak(b"new manifest"), 50)
    results = [sign(m, job_id, OUT_A, 100, p) for p in m.providers[:3]]
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job_id, job, results))
    assert list(ev["paid"]) == [100 * PRICE] * 3  # the price the job was opened with
    forged = Job(**{**job.__dict__, "prices": (50, PRICE, PRICE)})
    assert forged.hash() != job.hash()


def test_tampered_job_parameters_refused(market):
    m = market
    job_id, job, _ = m.open()
    cheaper = Job(**{**job.__dict__, "prices": (1, 1, 1)})
    with reverts("JobMismatch"):
        m.mc.settle(m.consumer, job_id, cheaper, [sign(m, job_id, OUT_A, 10, p) for p in m.providers[:3]])


def test_only_the_consumer_settles(market):
    m = market
    job_id, job, _ = m.open()
    with reverts("NotConsumer"):
        m.mc.settle(m.consumer2, job_id, job, [sign(m, job_id, OUT_A, 10, p) for p in m.providers[:3]])


# ----------------------------------------------------------------------------- deadlines and liveness

def test_missing_result_refused_until_delivery_deadline(market):
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    results = [sign(m, job_id, OUT_A, 30, m.providers[0]), sign(m, job_id, OUT_A, 30, m.providers[1]), None]
    m.set_next_timestamp(job.opened_at + P.delivery_window - 1)
    with reverts("MissingResult"):
        m.mc.settle(m.consumer, job_id, job, results)
    m.set_next_timestamp(job.opened_at + P.delivery_window)
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job_id, job, results))
    # The silent provider: unpaid, not slashed, its share refunded.
    assert list(ev["paid"]) == [300, 300, 0] and ev["slashMask"] == 0 and ev["refund"] == 3000 - 600
    assert acct_state(m, m.providers[2])["stake"] == STAKE and acct_state(m, m.providers[2])["locked"] == 0


def test_consumer_reclaims_everything_when_nobody_delivers(market):
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    m.advance(P.delivery_window)
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job_id, job, [None, None, None]))
    assert ev["refund"] == job.escrow and m.mc.credit(m.consumer.address) == job.escrow


def test_settle_deadline_boundary(market):
    m = market
    job_id, job, _ = m.open()
    results = [sign(m, job_id, OUT_A, 10, p) for p in m.providers[:3]]
    m.set_next_timestamp(job.opened_at + P.settle_window)
    with reverts("TooLate"):
        m.mc.settle(m.consumer, job_id, job, results)


def test_settle_just_before_deadline_succeeds(market):
    m = market
    job_id, job, _ = m.open()
    results = [sign(m, job_id, OUT_A, 10, p) for p in m.providers[:3]]
    m.set_next_timestamp(job.opened_at + P.settle_window - 1)
    m.mc.settle(m.consumer, job_id, job, results)
    assert not m.mc.is_open(job_id)


def test_consumer_walks_away_providers_paid_by_commit_reveal(market):
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    salts = [keccak(b"salt%d" % i) for i in range(3)]
    outs = [OUT_A, OUT_A, OUT_B]
    m.advance(P.settle_window)  # the consumer never settles
    for i, p in enumerate(m.providers[:3]):
        m.mc.commit(p, job_id, job, i, commitment(job_id, p.address, outs[i], 40, salts[i]))
    commit_end = job.opened_at + P.settle_window + P.commit_window
    m.set_next_timestamp(commit_end - 1)
    with reverts("TooEarly"):
        m.mc.reveal(m.providers[0], job_id, job, 0, outs[0], 40, salts[0])
    m.set_next_timestamp(commit_end)
    for i, p in enumerate(m.providers[:3]):
        m.mc.reveal(p, job_id, job, i, outs[i], 40, salts[i])  # anyone may send a reveal; it is bound to p
    reveal_end = commit_end + P.reveal_window
    m.set_next_timestamp(reveal_end - 1)
    with reverts("TooEarly"):
        m.mc.finalize(m.outsider, job_id, job)
    m.set_next_timestamp(reveal_end)
    ev = m.mc.settled_event(m.mc.finalize(m.outsider, job_id, job))
    assert list(ev["paid"]) == [400, 400, 0] and ev["slashMask"] == 0b100 and ev["refund"] == 3000 - 800


def test_copied_commitment_never_reveals(market):
    """A lazy provider copies an honest provider's commitment: it can never open it."""
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    honest, copier = m.providers[0], m.providers[1]
    salt = keccak(b"honest salt")
    c = commitment(job_id, honest.address, OUT_A, 40, salt)
    m.mc.commit(honest, job_id, job, 0, c)
    m.mc.commit(copier, job_id, job, 1, c)
    m.advance(P.settle_window + P.commit_window)
    m.mc.reveal(honest, job_id, job, 0, OUT_A, 40, salt)
    with reverts("CommitmentMismatch"):  # even knowing the revealed values and the salt
        m.mc.reveal(copier, job_id, job, 1, OUT_A, 40, salt)
    m.advance(P.reveal_window)
    ev = m.mc.settled_event(m.mc.finalize(m.outsider, job_id, job))
    assert list(ev["paid"]) == [0, 0, 0] and ev["outcome"] == 1  # one reveal is no majority: the copier gains nothing


def test_commit_after_commit_deadline_refused(market):
    """Nobody can commit after seeing a reveal: reveals start only when commits are closed."""
    m = market
    job_id, job, _ = m.open()
    commit_end = job.opened_at + P.settle_window + P.commit_window
    m.set_next_timestamp(commit_end)
    with reverts("TooLate"):
        m.mc.commit(m.providers[2], job_id, job, 2, b"\x01" * 32)


def test_reveal_after_reveal_deadline_refused(market):
    m = market
    job_id, job, _ = m.open()
    salt = keccak(b"s")
    m.mc.commit(m.providers[0], job_id, job, 0, commitment(job_id, m.providers[0].address, OUT_A, 5, salt))
    m.set_next_timestamp(job.opened_at + P.settle_window + P.commit_window + P.reveal_window)
    with reverts("TooLate"):
        m.mc.reveal(m.providers[0], job_id, job, 0, OUT_A, 5, salt)


def test_committed_provider_cannot_be_left_out_or_replaced(market):
    """A provider that committed on-chain proves it delivered: the consumer cannot drop it."""
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    salt = keccak(b"s")
    m.mc.commit(m.providers[2], job_id, job, 2, commitment(job_id, m.providers[2].address, OUT_A, 10, salt))
    with reverts("AlreadyCommitted"):
        m.mc.replace_provider(m.consumer, job_id, job, 2, m.providers[3].address)
    m.advance(P.delivery_window)
    with reverts("AlreadyCommitted"):
        m.mc.settle(m.consumer, job_id, job, [sign(m, job_id, OUT_A, 10, m.providers[0]),
                                               sign(m, job_id, OUT_A, 10, m.providers[1]), None])


def test_replace_a_silent_provider(market):
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    new_job, _ = m.mc.replace_provider(m.consumer, job_id, job, 1, m.providers[3].address)
    assert new_job.providers[1] == m.providers[3].address
    assert acct_state(m, m.providers[1])["locked"] == 0 and acct_state(m, m.providers[3])["locked"] == lock(m, 100)
    with reverts("JobMismatch"):  # the old parameters are no longer the job
        m.mc.settle(m.consumer, job_id, job, [sign(m, job_id, OUT_A, 10, p) for p in m.providers[:3]])
    results = [sign(m, job_id, OUT_A, 10, p) for p in (m.providers[0], m.providers[3], m.providers[2])]
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job_id, new_job, results))
    assert list(ev["paid"]) == [100, 100, 100]


def test_replace_with_a_listed_provider_refused(market):
    m = market
    job_id, job, _ = m.open()
    with reverts("DuplicateProvider"):
        m.mc.replace_provider(m.consumer, job_id, job, 1, m.providers[0].address)


def test_unsettled_job_finalizes_to_full_refund(market):
    """Nobody settles, nobody commits: anyone can close the job and the consumer is refunded."""
    m = market
    job_id, job, _ = m.open()
    m.advance(P.settle_window + P.commit_window + P.reveal_window)
    ev = m.mc.settled_event(m.mc.finalize(m.outsider, job_id, job))
    assert ev["refund"] == job.escrow and m.mc.credit(m.consumer.address) == job.escrow
    assert all(acct_state(m, p)["locked"] == 0 for p in m.providers[:3])


# ----------------------------------------------------------------------------- reentrancy

def test_reentrancy_through_a_hostile_token_refused(market):
    """A token that calls back into the registry during a transfer meets the reentrancy guard."""
    m = market
    from contracts.compile import TESTS
    from contracts.deploy import deploy_contract
    from mesh.chain import Chain

    art = json.loads((TESTS.build / "HostileToken.json").read_text())
    hostile_addr, _ = deploy_contract(m.chain.w3, m.deployer, art)
    dep = deploy(m.chain.w3, m.deployer, m.url, MarketParams(), token_address=hostile_addr)
    hostile = m.chain.w3.eth.contract(address=hostile_addr, abi=art["abi"])
    chain = Chain(m.chain.w3, dep)
    c = m.consumer
    chain.transact(c, hostile.functions.mint(c.address, 10**6))
    chain.transact(c, hostile.functions.approve(dep.registry, 10**6))
    # Arm: during deposit's transferFrom, re-enter withdrawCredit() to take the credit twice.
    payload = chain.registry.encode_abi("withdrawCredit", [])
    chain.transact(c, hostile.functions.arm(dep.registry, payload))
    chain.transact(c, chain.registry.functions.deposit(1000))
    assert hostile.functions.attempts().call() == 1
    assert hostile.functions.lastReentrySucceeded().call() is False
    assert bytes(hostile.functions.lastRevertData().call())[:4] == keccak(text="ReentrancyGuardReentrantCall()")[:4]
    assert chain.registry.functions.credit(c.address).call() == 1000
    assert hostile.functions.balanceOf(dep.registry).call() == 1000


def test_endpoint_is_announced_and_bounded(market):
    m = market
    endpoint = "/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2HAmExample"
    r = m.mc.register(m.providers[0], MODEL, keccak(b"manifest"), PRICE, endpoint)
    ev = m.chain.registry.events.ProviderRegistered().process_receipt(r)[0]["args"]
    assert ev["endpoint"] == endpoint and ev["price"] == PRICE
    with reverts("EndpointTooLong"):
        m.mc.register(m.providers[0], MODEL, keccak(b"manifest"), PRICE, "x" * 257)


def test_zero_commitment_refused(market):
    m = market
    job_id, job, _ = m.open()
    with reverts("ZeroCommitment"):
        m.mc.commit(m.providers[0], job_id, job, 0, b"\x00" * 32)


def test_commit_without_reveal_is_slashed_no_free_veto(market):
    """A provider commits (so the consumer can neither drop nor replace it), then never reveals.
    The other two reveal and are paid; the withholder loses its lock."""
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    salts = [keccak(b"s%d" % i) for i in range(3)]
    for i, p in enumerate(m.providers[:3]):
        m.mc.commit(p, job_id, job, i, commitment(job_id, p.address, OUT_A, 20, salts[i]))
    m.advance(P.delivery_window)
    with reverts("AlreadyCommitted"):
        m.mc.replace_provider(m.consumer, job_id, job, 0, m.providers[3].address)
    m.advance(P.settle_window + P.commit_window - P.delivery_window)
    for i in (1, 2):
        m.mc.reveal(m.providers[i], job_id, job, i, OUT_A, 20, salts[i])
    m.advance(P.reveal_window)
    ev = m.mc.settled_event(m.mc.finalize(m.outsider, job_id, job))
    assert list(ev["paid"]) == [0, 200, 200] and ev["slashMask"] == 0b001
    assert acct_state(m, m.providers[0])["stake"] == STAKE - lock(m, 100)
