"""Verified, paid queries end to end: real provider processes (CLI-started, one of them cheating),
real libp2p, real llama.cpp, real Anvil. The seats are drawn by the contract; the devnet's pools
(tests/conftest.py) make the draw's outcome certain where a test needs it: the open market seats
all three of OPEN_POOL, the "court" mesh all three of COURT, and a court-mesh dispute draws its
jury from the open market (the mesh has nobody left to judge): OPEN_POOL. Balances
are asserted to the base unit, on fresh consumer accounts so that nothing else moves them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from meshmarket.cli.errors import sentence
from meshmarket.consumer import query_events as events
from meshmarket.consumer.ask import AskOptions, Asker, discover, eligible, settle_pending
from meshmarket.consumer.discovery import check_jury
from meshmarket.consumer.journal import Journal
from meshmarket.mesh.errors import QueryError
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.lifecycle import job_state
from meshmarket.mesh.market import OUTCOME_AGREED, OUTCOME_JUDGED, ZERO32, group_id
from meshmarket.mesh.protocol import Sampling
from meshmarket.provider.engine import build_of
from tests.conftest import COURT, COURT_CHEATER, OPEN_POOL, SPARE

JURORS = OPEN_POOL

QUESTION = [("user", "What is two plus two?")]
PRICE, CAP, MAX = 10, 20, 16
COURT_GROUP = group_id("court")


def run_ask(net, consumer, group=None, journal_root=None, max_tokens=MAX, sink=events.ignore, **kw):
    # The open market here has three providers: it cannot seat a jury besides a job's seats, so
    # its queries say they trust it (min_pool 0; refused otherwise, see the test below). The court
    # mesh's jury comes from the open market: it passes the check as is.
    opts = AskOptions(max_tokens=max_tokens, max_price=CAP, group=group_id(group), dispute=kw.pop("dispute", False),
                      min_pool=6 if group else 0)
    asker = Asker(net.chain, consumer, journal=Journal(journal_root), **kw)
    return asker.ask(QUESTION, net.model_hash, discover(net.chain, net.model_hash, opts.group), opts, sink=sink)


def owed(net, i):
    return net.mc.account(dev_account(i).address)["owed"]


def total(net, address):
    """Every base unit an account controls: wallet, credit, stake, earnings."""
    a = net.mc.account(address)
    return net.chain.balance(address) + net.mc.credit(address) + a["stake"] + a["thawing"] + a["owed"]


def test_honest_seats_agree_all_paid_rest_refunded(meshnet, tmp_path):
    net = meshnet
    c = net.new_consumer()
    bal0 = net.chain.balance(c.address)
    owed0 = {i: owed(net, i) for i in OPEN_POOL}
    seen: list[events.QueryEvent] = []
    r = run_ask(net, c, journal_root=tmp_path, sink=seen.append)
    assert r.outcome == "agreed" and r.agreement == "3/3" and r.settled and r.text
    # The query's events, in order: drawn, then every seat's tokens and signed answer, then settled.
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "Drawn" and kinds[-1] == "Settled", kinds
    assert set(kinds[1:-1]) == {"SeatToken", "Delivered"}, kinds
    drawn, settled = seen[0], seen[-1]
    assert drawn.job_id == r.job_id and set(drawn.seats) == {s.provider for s in r.slots} and drawn.escrow == r.escrow
    assert settled.job_id == r.job_id and settled.outcome == "agreed" and settled.refund == r.refund
    assert list(settled.paid[:3]) == [s.paid for s in r.slots]
    tokens = [e for e in seen if isinstance(e, events.SeatToken)]
    assert "".join(e.text for e in tokens if e.streamed) == r.streamed == r.text
    assert {e.seat for e in tokens} == {0, 1, 2} and len({e.seat for e in tokens if e.streamed}) == 1
    delivered = [e for e in seen if isinstance(e, events.Delivered)]
    assert sorted(e.seat for e in delivered) == [0, 1, 2] and all(e.tokens == r.slots[e.seat].tokens for e in delivered)
    for d in delivered:  # a seat's answer comes after its last token
        assert max(i for i, e in enumerate(seen) if isinstance(e, events.SeatToken) and e.seat == d.seat) < seen.index(d)
    assert {s.provider for s in r.slots} == {dev_account(i).address for i in OPEN_POOL}  # the whole pool drawn
    n = r.slots[0].tokens
    assert all(s.tokens == n and s.paid == n * PRICE and s.agreed and not s.slashed for s in r.slots)
    assert r.escrow == MAX * CAP * 4 and r.refund == r.escrow - 3 * n * PRICE  # three seats + the jury reserve
    # To the unit: the escrow left the wallet, the unspent part waits as credit.
    assert net.chain.balance(c.address) == bal0 - r.escrow
    assert net.mc.credit(c.address) == r.refund
    assert {i: owed(net, i) - owed0[i] for i in OPEN_POOL} == {i: n * PRICE for i in OPEN_POOL}
    assert Journal(tmp_path).pending() == []
    # Every seat declared this machine's build; the answer's build is the OpenAI-style fingerprint.
    assert set(r.builds.values()) == {build_of().fingerprint} == {r.system_fingerprint}
    ev = job_state(net.chain, r.job_id).settled
    assert ev["outcome"] == OUTCOME_AGREED and ev["slashMask"] == 0


def _court_money(net, c, seats):
    return {a: total(net, a) for a in [c.address, *[dev_account(i).address for i in (*seats, *JURORS)]]}


def test_cheater_in_the_seats_is_judged_by_a_jury_slashed_and_burned(meshnet, engine, tmp_path):
    """The cheater signs consistent but altered tokens; the two honest seats agree. The consumer
    disputes; the jury (the open market's three: the mesh has no one else) scores every seat: the cheater hard-fails and
    its lock is burned, the honest seats are paid, the jurors are paid from the consumer's reserve
    (the dispute was won), the bond comes back. Every base unit accounted for."""
    net = meshnet
    c = net.new_consumer()
    cheater = dev_account(COURT_CHEATER).address
    before = _court_money(net, c, COURT)
    supply0 = net.chain.token.functions.totalSupply().call()
    journal = Journal(tmp_path)
    r = run_ask(net, c, "court", tmp_path, dispute=True)
    assert r.outcome == "contested" and r.agreement == "2/3" and not r.settled
    # The answer shown is the one the majority signed: what the real engine says.
    assert r.text == engine.generate(Sampling(messages=QUESTION, max_tokens=MAX)).run().text
    st = net.fast_forward_court(r.job_id, c, journal, say=lambda m: None)
    ev = st.settled
    assert ev["outcome"] == OUTCOME_JUDGED
    seat = st.job.seat_of(cheater)
    lock = net.chain.registry.functions.lockFor(MAX, PRICE).call()
    assert ev["slashMask"] == 1 << seat and st.contest.locks[seat] == lock
    assert set(st.jurors) == {dev_account(i).address for i in JURORS}
    after = _court_money(net, c, COURT)
    delta = {a: after[a] - before[a] for a in after}
    honest_pay = {st.job.seats[i]: int(ev["paid"][i]) for i in range(3) if i != seat}
    assert all(p > 0 for p in honest_pay.values()) and ev["paid"][seat] == 0
    share = st.job.jury_fee // len(JURORS)
    assert delta[cheater] == -lock
    assert all(delta[a] == p for a, p in honest_pay.items())
    assert all(delta[dev_account(i).address] == share for i in JURORS)
    assert delta[c.address] == -(sum(honest_pay.values()) + share * len(JURORS))  # bond back, reserve paid the jury
    assert net.chain.token.functions.totalSupply().call() == supply0 - lock  # burned, not redistributed
    assert journal.pending() == []


def test_a_cheater_that_disputes_its_loss_pays_the_jury(meshnet, tmp_path):
    """The consumer does not dispute; the cheater's own keeper does (its result is not paid
    provisionally). The jury finds it out: it is slashed and its bond pays the jurors."""
    net = meshnet
    c = net.new_consumer()
    cheater = dev_account(COURT_CHEATER).address
    before = _court_money(net, c, COURT)
    r = run_ask(net, c, "court", tmp_path)
    assert r.outcome == "contested"
    deadline = time.monotonic() + 30
    while job_state(net.chain, r.job_id).disputer is None:
        assert time.monotonic() < deadline, "the cheater's keeper did not dispute"
        time.sleep(0.2)
    st = net.fast_forward_court(r.job_id, c, Journal(tmp_path), say=lambda m: None)
    assert st.disputer == cheater and st.settled["outcome"] == OUTCOME_JUDGED
    seat = st.job.seat_of(cheater)
    lock, share = st.contest.locks[seat], st.job.jury_fee // len(JURORS)
    after = _court_money(net, c, COURT)
    assert after[cheater] - before[cheater] == -lock - share * len(JURORS)  # slashed, and its bond paid the jury
    assert all(after[dev_account(i).address] - before[dev_account(i).address] == share for i in JURORS)
    paid = sum(int(x) for x in st.settled["paid"])
    assert after[c.address] - before[c.address] == -paid  # the consumer paid only for honest work


def test_a_seat_killed_mid_stream_is_answered_by_an_added_seat(meshnet, tmp_path):
    """A seat dies while streaming: the consumer adds a seat, drawn from the pool (the spare,
    staked while the job runs: the only provider not seated). The dead seat has no result; it is
    left out after its claim window; the others are paid; nothing is stuck."""
    net = meshnet
    c = net.new_consumer()
    victim, spare = net.providers[3], dev_account(SPARE)
    killed = []

    seen: list[events.QueryEvent] = []

    def sink(event):
        seen.append(event)
        if isinstance(event, events.SeatToken) and event.provider == victim.address and not killed:
            net.mc.stake(spare, 100 * 10**6)
            os.kill(victim.proc.pid, signal.SIGKILL)
            killed.append(event.seat)

    journal = Journal(tmp_path)
    try:
        r = run_ask(net, c, journal_root=tmp_path, max_tokens=48, sink=sink)
    finally:
        net.stop(3)
        net.start(3, "--claim-poll", "0.5")
        net.mc.request_unstake(spare, net.mc.account(spare.address)["stake"])  # the open pool as it was
    assert killed, "the victim never streamed"
    assert len(r.slots) == 4 and r.slots[3].provider == spare.address and r.slots[3].status == "delivered"
    assert r.slots[killed[0]].status.startswith("failed")
    assert r.outcome == "pending" and not r.settled and r.agreement == "3/3"
    (failed,) = [e for e in seen if isinstance(e, events.SeatFailed)]
    (added,) = [e for e in seen if isinstance(e, events.SeatAdded)]
    (pending,) = [e for e in seen if isinstance(e, events.Pending)]
    assert failed.seat == killed[0] and failed.provider == victim.address and (added.seat, added.provider) == (3, spare.address)
    assert seen.index(failed) < seen.index(added) < seen.index(pending) == len(seen) - 1
    assert pending.missing == (killed[0],) and pending.deadline > pending.now
    p = net.deployment.params
    net.advance(p.delivery_window + p.claim_window)
    (done,) = settle_pending(net.chain, c, journal)
    assert done["action"] == "closed" and done["outcome"] == "agreed", (done, job_state(net.chain, r.job_id))
    assert done["paid"][killed[0]] == 0 and sum(1 for x in done["paid"] if x) == 3
    escrow = 48 * CAP * 5  # four seats and the jury reserve
    assert done["refund"] == escrow - sum(done["paid"]) and net.mc.credit(c.address) == done["refund"]
    assert journal.pending() == []


def test_a_pool_too_small_to_seat_a_jury_is_refused_before_any_transaction(meshnet, tmp_path):
    """A21: in a pool of three, two colluding seats outvote the third and no jury can be drawn to
    judge them. The consumer refuses such a pool before it sends anything; a mesh whose jury falls
    back on the open market (three there, three in the mesh) passes."""
    net = meshnet
    c = net.new_consumer()
    asker = Asker(net.chain, c, journal=Journal(tmp_path))
    with pytest.raises(QueryError, match="3 provider\\(s\\) able to sit on a jury; with fewer than 6"):
        asker.ask(QUESTION, net.model_hash, discover(net.chain, net.model_hash), AskOptions(max_tokens=MAX, max_price=CAP))
    assert net.chain.w3.eth.get_transaction_count(c.address) == 1  # its allowance only: no job opened
    r = _cli(net, tmp_path / "cli", "ask", "hi", "--account", "dev:6", "--max-tokens", "4")
    assert r.returncode == 1 and "--min-pool 0" in r.stderr and "Traceback" not in r.stderr
    # The court mesh's three, with the open market's three to fall back on for its jury: enough.
    court, open_market = (discover(net.chain, net.model_hash, g) for g in (COURT_GROUP, ZERO32))
    assert len(court) == 3 and len(open_market) == 4  # (the spare has no stake: it does not count)
    check_jury(net.chain, court, c.address, 6, open_market)
    with pytest.raises(QueryError, match="3 provider\\(s\\) able"):
        check_jury(net.chain, open_market, c.address, 6)


def test_too_few_or_too_dear_providers_is_a_clear_error_before_any_transaction(meshnet):
    net = meshnet
    me = dev_account(5).address
    nonce = net.chain.w3.eth.get_transaction_count(me)
    with pytest.raises(QueryError, match="a verified query needs three"):
        eligible(net.chain, discover(net.chain, net.model_hash, group_id("nobody")), me, MAX, CAP)
    with pytest.raises(QueryError, match="charge at most") as e:
        eligible(net.chain, discover(net.chain, net.model_hash), me, MAX, 5)
    assert e.value.code == "price_cap_too_low" and e.value.needed_price == 10
    assert sentence(e.value).endswith("raise --max-price to at least 10")  # the CLI's words, not the library's
    court = eligible(net.chain, discover(net.chain, net.model_hash, COURT_GROUP), me, MAX, CAP)
    assert {o.address for o in court} == {dev_account(i).address for i in COURT}
    assert net.chain.w3.eth.get_transaction_count(me) == nonce


def _cli(net, home, *args, timeout=180):
    home.mkdir(parents=True, exist_ok=True)
    net.deployment.save(home / "deployment.json")
    env = {**net.env(home), "MESH_PASSWORD": "pw"}
    return subprocess.run([sys.executable, "-m", "meshmarket.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _import(net, home, acct):
    home.mkdir(parents=True, exist_ok=True)
    env = {**net.env(home), "MESH_PASSWORD": "pw", "MESH_KDF_N": "16"}
    subprocess.run([sys.executable, "-m", "meshmarket.cli", "account", "import"], input=acct.key.hex() + "\n", env=env,
                   capture_output=True, text=True, check=True, timeout=60)


def test_cli_ask_json_receipt_and_funding_errors(meshnet, tmp_path):
    net = meshnet
    # Not enough balance: a clear sentence, no traceback, no transaction.
    poor = net.new_consumer(mesh=0, approve=False)
    _import(net, tmp_path / "poor", poor)
    r = _cli(net, tmp_path / "poor", "ask", "hi", "--account", poor.address, "--min-pool", "0")
    assert r.returncode == 1 and "short" in r.stderr and "Traceback" not in r.stderr
    assert net.chain.w3.eth.get_transaction_count(poor.address) == 0
    # Balance but no allowance, no terminal to ask: the approve is offered as a command.
    c = net.new_consumer(approve=False)
    _import(net, tmp_path / "c", c)
    r = _cli(net, tmp_path / "c", "ask", "hi", "--account", c.address, "--min-pool", "0")
    assert r.returncode == 1 and "mesh token approve" in r.stderr
    # With --yes it approves and answers; --json prints one object.
    r = _cli(net, tmp_path / "c", "ask", "What is two plus two?", "--account", c.address, "--max-tokens", "8",
             "--stop", ".", "--yes", "--json", "--min-pool", "0")
    assert r.returncode == 0, r.stderr
    receipt = json.loads(r.stdout)
    assert receipt["outcome"] == "agreed" and receipt["agreement"] == "3/3"
    assert receipt["paid"] + receipt["refund"] == receipt["escrow"] and "." not in receipt["text"]
    assert receipt["gas"]["open"] > 0 and receipt["gas"]["draw"] > 0 and receipt["gas"]["settle"] > 0
    assert all(isinstance(p["paid"], int) and p["build"] == build_of().fingerprint for p in receipt["providers"])
    # A bad option is refused before anything is sent.
    r = _cli(net, tmp_path / "c", "ask", "hi", "--account", c.address, *["--stop", "x"] * 5)
    assert r.returncode == 2 and "stop" in r.stderr


def test_cli_models_lists_the_pools(meshnet, tmp_path):
    net = meshnet
    r = _cli(net, tmp_path, "models", "--json")
    assert r.returncode == 0, r.stderr
    offers = json.loads(r.stdout)["offers"]
    by_provider = {o["provider"]: o for o in offers}
    assert {dev_account(i).address for i in (*OPEN_POOL, *COURT, *JURORS)} <= set(by_provider)
    assert all(by_provider[dev_account(i).address]["group"] is None for i in OPEN_POOL)
    assert all(by_provider[dev_account(i).address]["group"] == "0x" + COURT_GROUP.hex() for i in COURT)
    assert all(o["model_hash"] == "0x" + net.model_hash.hex() for o in offers)


def test_consumer_walks_away_providers_still_paid(meshnet, tmp_path):
    """The consumer gets the answers and never settles: the providers commit, reveal and finalize
    on their own after the deadlines, and are paid; the rest is refunded to the consumer."""
    net = meshnet
    c = net.new_consumer()
    journal = Journal(tmp_path)
    asker = Asker(net.chain, c, journal=journal)
    opts = AskOptions(max_tokens=MAX, max_price=CAP, min_pool=0)
    # Run the query but vanish before settling: the journal keeps the signed results.
    asker.mc.settle = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("consumer gone"))
    with pytest.raises(KeyboardInterrupt):
        asker.ask(QUESTION, net.model_hash, discover(net.chain, net.model_hash), opts)
    (pending,) = journal.pending()
    assert len(pending.results) == 3 and net.mc.is_open(pending.job)
    p = net.deployment.params

    def wait_for(cond, what, seconds=30.0):
        deadline = time.monotonic() + seconds
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    net.advance(p.delivery_window)
    wait_for(lambda: len(job_state(net.chain, pending.job_id).committed) == 3, "three commitments")
    net.advance(p.claim_window)
    wait_for(lambda: len(job_state(net.chain, pending.job_id).revealed) == 3, "three reveals")
    net.advance(p.reveal_window)
    wait_for(lambda: job_state(net.chain, pending.job_id).closed, "finalization by a provider")
    ev = job_state(net.chain, pending.job_id).settled
    n = pending.results[0].token_count
    assert list(ev["paid"])[:3] == [n * PRICE] * 3 and ev["refund"] == pending.job.held - 3 * n * PRICE
    assert net.mc.credit(c.address) == ev["refund"]
    # The consumer's next run finds the job closed and clears its journal.
    (done,) = settle_pending(net.chain, c, journal)
    assert done["action"] == "closed" and journal.pending() == []


def test_a_prompt_too_long_for_the_context_is_refused_before_any_escrow(meshnet, tmp_path):
    """30 KB of prompt cannot fit a 2,048-token context: refused after the open, before the draw
    takes any escrow (the pool's manifests say its context); the undrawn job expires by itself."""
    net = meshnet
    c = net.new_consumer()
    before = net.chain.balance(c.address) + net.mc.credit(c.address)
    journal = Journal(tmp_path)
    asker = Asker(net.chain, c, journal=journal)
    with pytest.raises(QueryError, match="cannot fit the providers' context of at most 2048") as e:
        asker.ask([("user", "word " * 6000)], net.model_hash, discover(net.chain, net.model_hash),
                  AskOptions(max_tokens=MAX, max_price=CAP, min_pool=0))
    assert e.value.code == "context_overflow" and e.value.limit == 2048 and e.value.job_id
    assert f"job 0x{e.value.job_id.hex()} was opened but not drawn" in sentence(e.value)
    assert net.chain.balance(c.address) + net.mc.credit(c.address) == before  # no escrow, no token spent
    (pending,) = journal.pending()
    assert pending.job.drawn_at == 0 and net.mc.is_open(pending.job)
    net.chain.w3.provider.make_request("anvil_mine", [hex(9)])  # past the draw window
    (done,) = settle_pending(net.chain, c, journal)
    assert done["action"] == "closed" and done["outcome"] == "refunded" and journal.pending() == []
