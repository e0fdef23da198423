"""Verified, paid queries end to end: real provider processes (CLI-started, one of them lying),
real libp2p, real llama.cpp, real Anvil. Balances are asserted to the base unit, on fresh
consumer accounts so that nothing else moves them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from consumer.ask import AskOptions, Asker, discover, eligible, settle_pending
from mesh.errors import QueryError
from consumer.journal import Journal
from mesh.keys import dev_account
from mesh.protocol import Sampling

QUESTION = [("user", "What is two plus two?")]
HONEST = (1, 2, 3)


def addresses(net, idx):
    return [net.providers[i].address for i in idx]


def run_ask(net, consumer, allow, max_tokens=16, max_price=20, seed=0, **kw):
    offers = eligible(net.chain, discover(net.chain, net.model_hash), consumer.address, max_tokens, max_price,
                      addresses(net, allow))
    asker = Asker(net.chain, consumer, journal=Journal(kw.pop("journal_root", None)), **kw)
    return asker.ask(QUESTION, net.model_hash, offers, AskOptions(max_tokens=max_tokens, max_price=max_price, seed=seed))


def owed(net, i):
    return net.mc.account(net.providers[i].address)["owed"]


def test_honest_trio_agrees_all_paid_rest_refunded(meshnet, tmp_path):
    net = meshnet
    c = net.new_consumer()
    bal0 = net.chain.balance(c.address)
    owed0 = {i: owed(net, i) for i in HONEST}
    r = run_ask(net, c, HONEST, journal_root=tmp_path)
    assert r.agreement == "3/3" and r.settled and r.text
    n = r.slots[0].tokens
    assert all(s.tokens == n and s.paid == n * 10 and s.agreed and not s.slashed for s in r.slots)
    assert r.escrow == 16 * 30 and r.refund == r.escrow - 3 * n * 10
    # To the unit: the escrow left the wallet, the unspent part waits as credit.
    assert net.chain.balance(c.address) == bal0 - r.escrow
    assert net.mc.credit(c.address) == r.refund
    assert {i: owed(net, i) - owed0[i] for i in HONEST} == {i: n * 10 for i in HONEST}
    assert Journal(tmp_path).pending() == []


def test_one_liar_is_outvoted_slashed_and_unpaid(meshnet, engine, tmp_path):
    net = meshnet
    c = net.new_consumer()
    liar = net.providers[7]
    stake0 = net.mc.account(liar.address)["stake"]
    supply0 = net.chain.token.functions.totalSupply().call()
    r = run_ask(net, c, (1, 2, 7), journal_root=tmp_path)
    assert r.agreement == "2/3"
    by_addr = {s.provider: s for s in r.slots}
    lock = net.chain.registry.functions.lockFor(16, 10).call()
    assert by_addr[liar.address].paid == 0 and by_addr[liar.address].slashed == lock
    assert net.mc.account(liar.address)["stake"] == stake0 - lock
    assert net.chain.token.functions.totalSupply().call() == supply0 - lock  # burned, not redistributed
    honest = [s for s in r.slots if s.provider != liar.address]
    assert all(s.agreed and s.paid == s.tokens * 10 for s in honest)
    assert net.mc.credit(c.address) == r.escrow - sum(s.paid for s in honest)
    # The verified text is the honest one (what the real engine says), not the liar's.
    assert r.text == engine.generate(Sampling(messages=QUESTION, max_tokens=16)).run().text
    assert liar.address[2:8] not in r.text


def test_all_three_disagree_full_refund(meshnet, tmp_path):
    net = meshnet
    c = net.new_consumer()
    bal0 = net.chain.balance(c.address)
    r = run_ask(net, c, (1, 7, 8), journal_root=tmp_path)
    assert r.agreement == "none" and r.settled
    assert r.paid == 0 and all(s.slashed == 0 for s in r.slots)  # disagreement alone is never slashed
    assert r.refund == r.escrow and net.mc.credit(c.address) == r.escrow
    assert net.chain.balance(c.address) + net.mc.credit(c.address) == bal0


def test_provider_killed_mid_stream_is_replaced_nothing_stuck(meshnet, tmp_path):
    net = meshnet
    c = net.new_consumer()
    victim = net.providers[9]  # cheapest: always chosen
    killed = []

    def on_any_token(slot, provider, text):
        if provider == victim.address and not killed:
            os.kill(victim.proc.pid, signal.SIGKILL)
            killed.append(slot)

    try:
        r = run_ask(net, c, (1, 2, 9, 4), max_tokens=48, journal_root=tmp_path, on_any_token=on_any_token)
    finally:
        net.stop(9)
        net.start(9, "--claim-poll", "0.5")  # the next test finds the market as it was
    assert killed, "the victim never streamed"
    slot = r.slots[killed[0]]
    assert slot.replaced == [victim.address] and slot.provider == net.providers[4].address
    assert r.agreement == "3/3" and r.settled
    assert net.mc.account(victim.address)["locked"] == 0  # its stake was released by the replacement
    # Nothing stuck: escrow = pay + refund, and the job is closed.
    assert r.paid + r.refund == r.escrow and not net.mc.is_open(r.job_id)


def test_fewer_than_three_providers_is_a_clear_error(meshnet):
    net = meshnet
    with pytest.raises(QueryError, match="a verified query needs three"):
        eligible(net.chain, discover(net.chain, net.model_hash), dev_account(5).address, 16, 20, addresses(net, (1, 2)))


def test_cap_below_every_price_is_a_clear_error(meshnet):
    net = meshnet
    with pytest.raises(QueryError, match="raise --max-price to at least"):
        eligible(net.chain, discover(net.chain, net.model_hash), dev_account(5).address, 16, 5)


def _cli(net, home, *args, timeout=180):
    net.deployment.save(home / "deployment.json")
    env = {**net.env(home), "MESH_PASSWORD": "pw"}
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _import(net, home, acct):
    home.mkdir(parents=True, exist_ok=True)
    env = {**net.env(home), "MESH_PASSWORD": "pw", "MESH_KDF_N": "16"}
    subprocess.run([sys.executable, "-m", "cli", "account", "import"], input=acct.key.hex() + "\n", env=env,
                    capture_output=True, text=True, check=True, timeout=60)


def test_cli_ask_json_receipt_and_funding_errors(meshnet, tmp_path):
    net = meshnet
    # Not enough balance: a clear sentence, no traceback.
    poor = net.new_consumer(mesh=0, approve=False)
    _import(net, tmp_path / "poor", poor)
    r = _cli(net, tmp_path / "poor", "ask", "hi", "--account", poor.address, "--allow", ",".join(addresses(net, HONEST)))
    assert r.returncode == 1 and "short" in r.stderr and "Traceback" not in r.stderr
    # Balance but no allowance, no terminal to ask: the approve is offered as a command.
    c = net.new_consumer(approve=False)
    _import(net, tmp_path / "c", c)
    r = _cli(net, tmp_path / "c", "ask", "hi", "--account", c.address, "--allow", ",".join(addresses(net, HONEST)))
    assert r.returncode == 1 and "mesh token approve" in r.stderr
    # With --yes it approves and answers; --json prints one object.
    r = _cli(net, tmp_path / "c", "ask", "What is two plus two?", "--account", c.address, "--max-tokens", "8",
             *[x for a in addresses(net, HONEST) for x in ("--allow", a)], "--yes", "--json")
    assert r.returncode == 0, r.stderr
    import json

    receipt = json.loads(r.stdout)
    assert receipt["agreement"] == "3/3" and receipt["paid"] + receipt["refund"] == receipt["escrow"]
    assert receipt["gas"]["open"] > 0 and receipt["gas"]["settle"] > 0
    assert all(isinstance(p["paid"], int) for p in receipt["providers"])


def test_cli_models_lists_the_market(meshnet, tmp_path):
    net = meshnet
    r = _cli(net, tmp_path, "models", "--json")
    assert r.returncode == 0, r.stderr
    import json

    offers = json.loads(r.stdout)["offers"]
    assert {o["provider"] for o in offers} >= set(addresses(net, HONEST))
    assert all(o["model_hash"] == "0x" + net.model_hash.hex() for o in offers)


def test_consumer_walks_away_providers_still_paid(meshnet, tmp_path):
    """The consumer gets the answers and never settles: the providers commit, reveal and
    finalize on their own after the deadlines, and are paid; the rest is refunded."""
    net = meshnet
    c = net.new_consumer()
    journal = Journal(tmp_path)
    asker = Asker(net.chain, c, journal=journal)
    offers = eligible(net.chain, discover(net.chain, net.model_hash), c.address, 16, 20, addresses(net, HONEST))
    # Run the query but crash before settling: the journal keeps the signed results.
    original = net.mc.settle
    asker.mc.settle = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("consumer gone"))
    with pytest.raises(KeyboardInterrupt):
        asker.ask(QUESTION, net.model_hash, offers, AskOptions(max_tokens=16, max_price=20))
    asker.mc.settle = original
    (pending,) = journal.pending()
    assert len(pending.results) == 3 and net.mc.is_open(pending.job_id)
    job = pending.job
    p = net.deployment.params

    def wait_for(cond, what, seconds=30.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    net.advance(p.delivery_window)
    wait_for(lambda: all(x != b"\x00" * 32 for x in net.chain.market.functions.commitments(pending.job_id).call()),
             "three commitments")
    net.advance(p.settle_window + p.commit_window)
    wait_for(lambda: all(r[2] for r in net.chain.market.functions.reveals(pending.job_id).call()), "three reveals")
    net.advance(p.reveal_window)
    wait_for(lambda: not net.mc.is_open(pending.job_id), "finalization by a provider")
    ev = net.chain.market.events.JobSettled().get_logs(from_block=0, argument_filters={"jobId": pending.job_id})[0]["args"]
    n = pending.results[0].token_count
    assert list(ev["paid"]) == [n * 10] * 3 and ev["refund"] == job.escrow - 3 * n * 10
    assert net.mc.credit(c.address) == ev["refund"]
    # The consumer's next run finds the job closed and clears its journal.
    settle_pending(net.chain, c, journal)
    assert journal.pending() == []
