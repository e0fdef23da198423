"""An independent review of issue 16's lifecycle module (mesh/lifecycle.py) and its three thin
executors (consumer/settlement.settle_pending, provider/claims.ClaimKeeper, provider/court.CourtKeeper),
played on the session's Anvil with the honest parties' real software (tests/attack_scenarios.py).

Each test is an attack or a crash the review tried. Those that pass document a property the new
code keeps; a finding is a strict xfail naming what goes wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from meshmarket.mesh.events import MARKET_EVENTS, REGISTRY_EVENTS, EventDecoder
from meshmarket.mesh.lifecycle import DRAW_WINDOW, Deadlines, consumer_action, job_state, seat_action
from meshmarket.provider.claims import Claim, ClaimKeeper
from meshmarket.provider.court import CourtKeeper
from tests.attack_scenarios import (
    HONEST,
    HONEST_PAY,
    P,
    REQUEST,
    Honest,
    Script,
    TruthJudge,
    acct_of,
    bogus,
    claim_end,
    delivery_end,
    drive,
    honest_providers,
    mine_at,
    mine_blocks,
    open_job,
    reveal_end,
    revert_name,
    sign,
)

OUTCOME_JUDGED, OUTCOME_PROVISIONAL, OUTCOME_AGREED = 2, 1, 0


def _check_state_against_storage(m, st) -> None:
    """What the fold says equals what the contract stores: the slot's hash (job, or job + contest,
    or CLOSED) and the dispute's opened block, jury time, void flag and evidence mask."""
    slot = m.mc.job_slot(st.job)
    if st.closed:
        assert slot != st.job.hash() and (st.contest is None or slot != st.contest.slot_hash(st.job))
    elif st.contest is None:
        assert slot == st.job.hash()
    else:
        assert slot == st.contest.slot_hash(st.job)
    if st.disputer is not None and not st.closed:
        d = m.mc.dispute_of(st.job_id)
        assert d["disputer"] == st.disputer
        assert d["opened_block"] == st.dispute_block
        assert (d["jury_at"] or None) == st.jury_at
        assert bool(d["void"]) == st.void
        assert d["evidence"] == sum(1 << s for s in st.evidence)


def _plain(v):
    if hasattr(v, "keys"):
        return {k: _plain(v[k]) for k in v.keys()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    return v


def test_the_fold_matches_storage_through_a_judged_job_with_an_added_seat(market, tmp_path):
    """A job with a seat added (four seats), one liar among them, the consumer's settle contests it,
    the consumer disputes, the seats' keepers draw the jury and post evidence, honest jurors vote:
    at every step the folded state equals the contract's storage (the job hash with the added
    seat, the contest's slot hash, the dispute's opened block, the jury's time as juryAt, the
    evidence mask). The honest seats are paid, the liar slashed. Then every log of the run, of
    both contracts, decodes through mesh.events exactly as web3's process_log reads it."""
    m = market
    honest = Honest(m, tmp_path, m.providers)
    buyer = honest.consumer(m.consumer)
    job = open_job(m, m.consumer)
    job, added, _ = m.mc.add_seat(m.consumer, job)
    assert added == 3 and job.seat_count == 4
    buyer.opened(job)
    for j in honest_providers(m, "review-juror", 3):
        honest.add(j)
    liar = acct_of(job.seats[2])
    lie = bogus(HONEST.count)
    for i in range(4):
        acct = acct_of(job.seats[i])
        if i == 2:
            honest.seats.pop(acct.address)  # the liar runs no honest keeper
            buyer.received(job, i, sign(m, job, lie, liar), lie.text)
        else:
            buyer.received(job, i, honest.seat(acct).serve(job, HONEST), HONEST.text)
    script = Script(m, contest=lambda st: m.mc.dispute(m.consumer, job, st.contest, REQUEST))
    checked = []

    def hook(st):
        _check_state_against_storage(m, st)
        checked.append((st.contest is not None, st.disputer is not None, st.jury_at is not None))
        script(st)

    st = drive(m, job.job_id, honest, hook)
    assert not script.errors, script.errors
    assert (True, True, True) in checked  # the checks ran in the court too
    assert st.settled["outcome"] == OUTCOME_JUDGED
    assert [int(x) for x in st.settled["paid"]][:4] == [HONEST_PAY, HONEST_PAY, 0, HONEST_PAY]
    assert int(st.settled["slashMask"]) == 1 << 2

    dec = EventDecoder.for_chain(m.chain)
    for name in (*MARKET_EVENTS, *REGISTRY_EVENTS):
        contract = m.chain.market if name in MARKET_EVENTS else m.chain.registry
        web3_event = getattr(contract.events, name)()
        logs = m.chain.w3.eth.get_logs({"address": contract.address, "fromBlock": job.open_block,
                                        "toBlock": "latest", "topics": [dec.topic(name)]})
        for lg in logs:
            ours = dec.decode(lg)
            assert ours is not None and ours.name == name
            assert _plain(ours.args) == _plain(web3_event.process_log(lg)["args"]), name


@dataclass
class _Claim:
    seat: int
    committed: bool = False
    revealed: bool = False
    disputed: bool = False


def _contested_with_liar(m):
    """A job whose seats 0 and 1 answer HONEST and seat 2 a lie, settled by the consumer: contested,
    provisional {0, 1}. Three more honest providers can sit on its jury."""
    job = open_job(m, m.consumer)
    lie = bogus(HONEST.count)
    results = [sign(m, job, HONEST, acct_of(job.seats[0])), sign(m, job, HONEST, acct_of(job.seats[1])),
               sign(m, job, lie, acct_of(job.seats[2]))]
    contest = m.mc.contest_of(m.mc.settle(m.consumer, job, results))
    assert contest is not None and contest.provisional == 0b011
    return job, contest, lie


@pytest.mark.parametrize("latest_after_dispute", [DRAW_WINDOW - 1, DRAW_WINDOW])
def test_the_jury_draw_window_edge_on_anvil(market, latest_after_dispute):
    """Intended change (1), on the real contract: while the latest block is dispute + 7 the seat's
    policy draws the jury, and the draw (mined in dispute + 8) succeeds; at dispute + 8 the policy
    resolves, the draw would revert DrawExpired and the resolve (provisional outcome, the bond
    returned) goes through."""
    m = market
    job, contest, _ = _contested_with_liar(m)
    honest_providers(m, "edge-juror", 3)
    s0 = acct_of(job.seats[0])
    m.mc.dispute(acct_of(job.seats[2]), job, contest, REQUEST)
    st = job_state(m.chain, job.job_id)
    mine_blocks(m, st.dispute_block + latest_after_dispute - m.chain.w3.eth.block_number)
    block = m.chain.w3.eth.block_number
    assert block == Deadlines.of(st, P).jury_last_block - DRAW_WINDOW + latest_after_dispute
    action = seat_action(st, _Claim(0), P, m.chain.pending_time(), block)
    if latest_after_dispute < DRAW_WINDOW:
        assert action.kind == "draw_jury"
        jurors, _ = m.mc.draw_jury(s0, job, contest)
        assert len(jurors) == 3
    else:
        assert action.kind == "resolve"
        snap = m.rpc("evm_snapshot")
        assert revert_name(lambda: m.mc.draw_jury(s0, job, contest)) == "DrawExpired"
        assert m.rpc("evm_revert", [snap]) is True
        settled = m.mc.settled_event(m.mc.resolve(s0, job, contest))
        assert settled["outcome"] == OUTCOME_PROVISIONAL
        assert [int(x) for x in settled["paid"]][:3] == [HONEST_PAY, HONEST_PAY, 0]


def test_a_seat_killed_after_its_commit_was_mined_reveals_on_restart_and_is_paid(market, tmp_path):
    """Intended change (2), end to end: the consumer walks away; seat 0's keeper commits, and is
    killed after the commit was mined but before claims.json said so (the file as it was before the
    commit). Restarted from that file it reveals (the chain's ResultCommitted counts) and is paid;
    before issue 16 it retried the commit (AlreadyCommitted) and never revealed: finalize slashed it."""
    m = market
    job = open_job(m, m.consumer)
    keepers, paths = [], []
    for i in range(3):
        acct = acct_of(job.seats[i])
        path = tmp_path / f"claims-{i}.json"
        k = ClaimKeeper(m.chain, acct, path=path)
        sr = sign(m, job, HONEST, acct)
        k.add(Claim(job.job_id, job, i, sr.output_hash, sr.token_count, HONEST.text_hash, HONEST.packed, REQUEST))
        keepers.append(k)
        paths.append(path)
    before_commit = paths[0].read_text()
    mine_at(m, delivery_end(job))
    for k in keepers:
        k.tick()
    assert job_state(m.chain, job.job_id).committed == {0, 1, 2}
    paths[0].write_text(before_commit)  # killed before the flag was saved
    keepers[0] = ClaimKeeper(m.chain, acct_of(job.seats[0]), path=paths[0])
    assert not keepers[0].pending()[0].committed
    for t in (claim_end(job), reveal_end(job)):
        mine_at(m, t)
        for k in keepers:
            k.tick()
    st = job_state(m.chain, job.job_id)
    assert st.closed and st.settled["outcome"] == OUTCOME_AGREED
    assert [int(x) for x in st.settled["paid"]][:3] == [HONEST_PAY] * 3
    assert int(st.settled["slashMask"]) == 0


def test_a_juror_killed_after_its_vote_commit_was_mined_still_reveals(market, tmp_path):
    """A juror killed after its commitVote was mined but before court.json recorded it (found by the
    review of issue 16; the old keeper had it too): after a restart the chain's VoteCommitted counts,
    so it judges again to recover its verdicts and reveals them with the salt saved when the duty was
    found, instead of retrying the commit and waiting forever (its share and its vote lost, a liar
    escaping the slash when the revealed hard votes fall below the jury's majority)."""
    m = market
    job, contest, lie = _contested_with_liar(m)
    honest_providers(m, "restart-juror", 3)
    m.mc.dispute(m.consumer, job, contest, REQUEST)
    drawn, _ = m.mc.draw_jury(m.outsider, job, contest)
    assert len(drawn) == 3
    jurors = [acct_of(a) for a in drawn]
    judge = TruthJudge()
    paths = {j.address: tmp_path / f"court-{i}.json" for i, j in enumerate(jurors)}
    keepers = {j.address: CourtKeeper(m.chain, j, judge, path=paths[j.address]) for j in jurors}
    for i in (0, 1):  # the honest seats' evidence; the liar posts none
        m.mc.post_evidence(m.outsider, job, contest, i, HONEST.text_hash, HONEST.packed)
    for k in keepers.values():
        k.tick()  # evidence phase: each finds its duty and saves it (salt, not committed)
    victim = jurors[0]
    before_commit = paths[victim.address].read_text()
    st = job_state(m.chain, job.job_id)
    d = Deadlines.of(st, P)
    mine_at(m, d.vote_commit[0])
    for k in keepers.values():
        k.tick()
    assert all(k.duties()[0].committed for k in keepers.values())
    paths[victim.address].write_text(before_commit)  # killed before the flag was saved
    keepers[victim.address] = CourtKeeper(m.chain, victim, judge, path=paths[victim.address])
    keepers[victim.address].tick()  # still in the commit phase after the restart
    mine_at(m, d.vote_reveal[0])
    for k in keepers.values():
        k.tick()
    dd = m.mc.dispute_of(job.job_id)
    index = list(dd["jurors"]).index(victim.address)
    assert dd["revealed"] >> index & 1, "the restarted juror never revealed its committed vote"


def test_an_orphaned_job_is_adopted_and_its_served_seats_are_paid(market, tmp_path):
    """The consumer crashed between the open being mined and its journal being written (here: it
    never journaled the job), and holds no result. Its `settle_pending` adopts the job from its
    busy slot and the JobOpened events; the seats that served commit, reveal and the job closes
    with each paid, the consumer refunded the rest."""
    m = market
    honest = Honest(m, tmp_path, m.providers)
    buyer = honest.consumer(m.consumer)
    job = open_job(m, m.consumer)  # never journaled
    for i in range(3):
        honest.seat(acct_of(job.seats[i])).serve(job, HONEST)
    st = drive(m, job.job_id, honest)
    assert any("adopted" in line for line in honest.log)
    assert st.settled["outcome"] == OUTCOME_AGREED
    assert [int(x) for x in st.settled["paid"]][:3] == [HONEST_PAY] * 3
    assert not buyer.journal.pending()


def test_the_consumer_restarted_with_a_stale_journal_never_settles_an_agreed_job_twice(market, tmp_path):
    """The consumer's journal still holds a job its query settled (killed before the journal entry
    was removed): settle_pending reads the chain, sees it closed and drops it without a transaction."""
    m = market
    honest = Honest(m, tmp_path)
    buyer = honest.consumer(m.consumer)
    job = open_job(m, m.consumer)
    buyer.opened(job)
    results = []
    for i in range(3):
        r = sign(m, job, HONEST, acct_of(job.seats[i]))
        buyer.received(job, i, r, HONEST.text)
        results.append(r)
    m.mc.settle(m.consumer, job, results)
    nonce = m.chain.w3.eth.get_transaction_count(m.consumer.address)
    report = buyer.tick()
    assert report[0]["action"] == "closed" and report[0]["outcome"] == "agreed"
    assert m.chain.w3.eth.get_transaction_count(m.consumer.address) == nonce
    assert not buyer.journal.pending()


def test_a_void_jury_folds_as_void_and_every_policy_resolves_with_the_bond_returned(market, tmp_path):
    """A dispute whose pool cannot seat a full jury (the three seats and the disputer excluded, one
    provider left): JuryDrawn with no jurors folds as void (no jury time), the seat keeper and the
    consumer both choose resolve at once, and the provisional outcome stands with the disputer's
    bond returned in full."""
    m = market
    job, contest, _ = _contested_with_liar(m)
    liar = acct_of(job.seats[2])
    m.mc.dispute(liar, job, contest, REQUEST)
    jurors, _ = m.mc.draw_jury(m.outsider, job, contest)
    assert jurors == []
    st = job_state(m.chain, job.job_id)
    assert st.void and st.jury_at is None and st.jurors == ()
    _check_state_against_storage(m, st)
    now, block = m.chain.pending_time(), m.chain.w3.eth.block_number
    assert seat_action(st, _Claim(0), P, now, block).kind == "resolve"
    assert consumer_action(st, {0, 1, 2}, P, now, block).kind == "resolve"
    honest = Honest(m, tmp_path, [acct_of(job.seats[0])])
    s0 = honest.seat(job.seats[0])
    s0.claims.add(Claim(job.job_id, job, 0, HONEST.hash, HONEST.count, HONEST.text_hash, HONEST.packed, REQUEST))
    s0.tick()
    st = job_state(m.chain, job.job_id)
    assert st.closed and st.settled["outcome"] == OUTCOME_PROVISIONAL
    assert [int(x) for x in st.settled["paid"]][:3] == [HONEST_PAY, HONEST_PAY, 0]
    (paid,) = m.chain.market.events.JuryPaid().get_logs(from_block=job.open_block,
                                                         argument_filters={"jobId": job.job_id})
    assert paid["args"]["bondRefund"] == job.jury_fee and paid["args"]["share"] == 0
