"""The indexer against the real contracts on Anvil (tests/conftest.py's `market`): the ledger must
mirror the registry's state to the base unit, sync incrementally and idempotently, resume after a
crash, and refuse a different chain or a rewritten history. The main scenario also runs against
PostgreSQL; the CLI (`mesh ledger ...`) is driven at the end.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from eth_utils import keccak
from sqlalchemy import create_engine, text

from ledger import ChainIdentity, RegistryParams, open_ledger
from ledger.indexer import EventDecoder, Indexer
from ledger.records import checksum
from mesh.anvil import start_anvil
from contracts.deploy import deploy
from mesh.chain import Chain, connect
from mesh.config import MarketParams
from mesh.errors import LedgerError
from mesh.keys import dev_account
from mesh.market import ResultClaim, commitment
from tests.conftest import MODEL, PRICE, STAKE
from tests.pg import ledger_url, pg_cluster, pg_url  # noqa: F401 — fixtures

OUT_A, OUT_B, OUT_C = keccak(b"A"), keccak(b"B"), keccak(b"C")
P = MarketParams()


def sign(m, job_id, out, count, acct):
    return ResultClaim(job_id, out, count).sign(acct, m.chain.chain_id, m.chain.market.address)


def scenario(m) -> dict:
    """Every kind of event: agreement, a slash, no majority, a replacement, withdrawals, a thaw,
    consumer credit, and one job left open (its locks must show)."""
    p = m.providers
    ids = {}
    ids["agree"], job, _ = m.open()
    m.mc.settle(m.consumer, ids["agree"], job, [sign(m, ids["agree"], OUT_A, 40, a) for a in p[:3]])
    ids["slash"], job, _ = m.open(max_tokens=50)
    m.mc.settle(m.consumer, ids["slash"], job, [sign(m, ids["slash"], o, 30, a) for o, a in zip((OUT_A, OUT_B, OUT_A), p)])
    ids["split"], job, _ = m.open()
    m.mc.settle(m.consumer, ids["split"], job, [sign(m, ids["split"], o, 20, a) for o, a in zip((OUT_A, OUT_B, OUT_C), p)])
    ids["replaced"], job, _ = m.open(max_tokens=80)
    m.mc.register(p[3], keccak(b"test-model.gguf"), keccak(b"manifest-3b"), PRICE - 2)  # cheaper now
    job, _ = m.mc.replace_provider(m.consumer, ids["replaced"], job, 2, p[3].address)
    m.mc.settle(m.consumer, ids["replaced"], job, [sign(m, ids["replaced"], OUT_A, 10, a) for a in (p[0], p[1], p[3])])
    m.mc.withdraw_earnings(p[0])
    m.mc.request_unstake(p[2], 12345)
    m.mc.deposit(m.consumer2, 5000)
    m.mc.withdraw_credit(m.consumer2)
    ids["open"], _, _ = m.open(providers=[p[1].address, p[2].address, p[3].address], max_tokens=300)
    return ids


def assert_mirrors_registry(m, led) -> None:
    for a in m.providers:
        chain = m.mc.account(a.address)
        row = led.provider(a.address)
        assert (row.stake, row.locked, row.owed, row.thawing, row.price) == (
            chain["stake"], chain["locked"], chain["owed"], chain["thawing"], chain["price"]), a.address
        assert (row.thaw_ready_at or 0) == chain["thaw_ready_at"]
        assert row.model_hash == "0x" + chain["model_hash"].hex()
        assert row.manifest_hash == "0x" + chain["manifest_hash"].hex()


def test_ledger_mirrors_the_chain(market, ledger_url):  # noqa: F811
    m = market
    ids = scenario(m)
    with open_ledger(ledger_url) as led:
        report = Indexer(led, m.chain).sync()
        assert report.up_to_date and report.events > 0
        assert_mirrors_registry(m, led)
        p = [a.address for a in m.providers]
        out = {k: led.job(v) for k, v in ids.items()}
        assert [x.outcome for x in out["agree"].providers] == ["agreed"] * 3
        assert [x.outcome for x in out["slash"].providers] == ["agreed", "slashed", "agreed"]
        assert (out["split"].status, [x.outcome for x in out["split"].providers]) == ("refunded", ["dissent"] * 3)
        assert [x.provider for x in out["replaced"].providers] == [p[0], p[1], p[3]]
        assert out["replaced"].providers[2].price == PRICE - 2
        assert out["open"].status == "open" and out["open"].escrow == 300 * 3 * (PRICE - 2 + PRICE * 2) // 3
        assert out["agree"].refund == 100 * 3 * PRICE - 3 * 40 * PRICE
        assert [(s.provider, s.job_id) for s in led.slashes()] == [(p[1], "0x" + ids["slash"].hex())]
        earned = {e.provider: e for e in led.earnings()}
        assert earned[p[0]].withdrawn == 400 + 300 + 100 and earned[p[0]].owed == 0
        assert earned[p[1]].earned == 400 + 100 and earned[p[1]].slashed == m.chain.registry.functions.lockFor(50, PRICE).call()
        ev = led.evidence()
        assert ev[p[1]].slashed == pytest.approx(1) and ev[p[2]].replaced == pytest.approx(1)
        counts = led.counts()
        # Deposited and CreditWithdrawn are kept in the event log (consumer credit is not a table).
        assert counts["chain_events"] == sum(1 for _ in _all_logs(m))
        assert counts["jobs"] == 5 and counts["replacements"] == 1 and counts["refunds"] == 4
        # Discovery: who could take a job now. P2 has little free stake left after its thaw and the
        # open job's lock; a job that would lock more than that must not be offered to it.
        free2 = m.chain.registry.functions.freeStake(p[2]).call()
        assert led.provider(p[2]).free_stake == free2
        assert {c.address for c in led.candidates(MODEL, PRICE, 100)} == set(p)
        assert {c.address for c in led.candidates(MODEL, PRICE - 2, 100)} == {p[3]}
        big = free2 // (P.collateral_ratio * PRICE) + 1
        lock_for = m.chain.registry.functions.lockFor
        assert lock_for(big, PRICE).call() > free2 >= lock_for(big - 1, PRICE).call()
        assert p[2] not in {c.address for c in led.candidates(MODEL, PRICE, big)}
        assert led.candidates(keccak(b"other"), PRICE, 1) == []


def _all_logs(m):
    return m.chain.w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest",
                                    "address": [m.chain.registry.address, m.chain.market.address],
                                    "topics": [EventDecoder.for_chain(m.chain).topics]})


def test_fast_decoder_agrees_with_web3(market):
    m = market
    scenario(m)
    dec = EventDecoder.for_chain(m.chain)
    logs = list(_all_logs(m))
    assert {dec.decode(log).name for log in logs} >= {"ProviderRegistered", "Staked", "JobOpened", "JobSettled",
                                                     "Slashed", "ProviderReplaced", "UnstakeRequested"}
    for log in logs:
        ours = dec.decode(log)
        contract = m.chain.registry if ours.contract == "registry" else m.chain.market
        theirs = getattr(contract.events, ours.name)().process_log(log)["args"]
        assert set(ours.args) == set(theirs)
        for k, v in theirs.items():
            want = ("0x" + bytes(v).hex() if isinstance(v, bytes) else checksum(v) if isinstance(v, str) and v.startswith("0x")
                    else [checksum(x) if isinstance(x, str) else x for x in v] if isinstance(v, (list, tuple)) else v)
            assert ours.args[k] == want, (ours.name, k)


def test_sync_is_incremental_idempotent_and_bounded(market, tmp_path):
    m = market
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    with open_ledger(url) as led:
        first = Indexer(led, m.chain, batch_blocks=5).sync()
        assert first.batches == -(-(first.to_block - first.from_block + 1) // 5)
        assert Indexer(led, m.chain).sync().events == 0  # nothing new
        ids = scenario(m)
        second = Indexer(led, m.chain, batch_blocks=7).sync()
        assert second.from_block == first.to_block + 1 and second.events > 0
        before = (led.counts(), [led.provider(a.address) for a in m.providers])
        # Rewind the cursor to the start: every log is found already stored, nothing is counted twice.
        start = led.cursor().start_block
        parent = m.chain.w3.eth.get_block(start - 1)["hash"].to_0x_hex()
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE indexer_cursor SET last_block = :b, last_block_hash = :h"),
                         {"b": start - 1, "h": parent})
        engine.dispose()
        again = Indexer(led, m.chain).sync()
        assert (again.events, again.skipped) == (0, before[0]["chain_events"])
        assert (led.counts(), [led.provider(a.address) for a in m.providers]) == before
        assert led.job(ids["slash"]).status == "settled"


def test_crash_mid_sync_resumes_where_it_stopped(market, tmp_path):
    m = market
    scenario(m)
    with open_ledger(f"sqlite:///{tmp_path / 'clean.sqlite'}") as clean:
        Indexer(clean, m.chain).sync()
        want = (clean.counts(), [clean.provider(a.address) for a in m.providers], clean.evidence())
    with open_ledger(f"sqlite:///{tmp_path / 'crash.sqlite'}") as led:
        seen = []

        def crash(result):
            seen.append(result.last_block)
            if len(seen) == 2:
                raise KeyboardInterrupt("power cut")

        with pytest.raises(KeyboardInterrupt):
            Indexer(led, m.chain, batch_blocks=4).sync(on_batch=crash)
        assert led.cursor().last_block == seen[-1]  # both batches committed, with their rows
        Indexer(led, m.chain, batch_blocks=4).sync()
        assert (led.counts(), [led.provider(a.address) for a in m.providers], led.evidence()) == want


def test_node_refusing_large_ranges_is_handled(market, tmp_path, monkeypatch):
    """Public RPC nodes cap eth_getLogs ranges: the indexer halves the range until one is accepted."""
    m = market
    scenario(m)
    real = Indexer.fetch
    spans = []

    def capped(self, lo, hi):
        spans.append(hi - lo + 1)
        if hi - lo + 1 > 8:
            raise ValueError("query exceeds max block range 8")
        return real(self, lo, hi)

    monkeypatch.setattr(Indexer, "fetch", capped)
    with open_ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as led:
        Indexer(led, m.chain).sync()
        assert_mirrors_registry(m, led)
    assert max(s for s in spans if s <= 8) <= 8 and spans[0] > 8


def test_a_restarted_chain_is_refused_then_reset(market, tmp_path):
    m = market
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    with open_ledger(url) as led:
        Indexer(led, m.chain).sync()
        led.record_observation(m.providers[0].address, "timeout")
        with start_anvil() as node:  # same deployer and nonces: the same contract addresses
            w3 = connect(node.url)
            other = Chain(w3, deploy(w3, dev_account(0), node.url, MarketParams()))
            assert other.market.address == m.chain.market.address
            with pytest.raises(LedgerError) as err:
                Indexer(led, other).sync()
            assert "genesis" in str(err.value) and "mesh ledger sync --reset" in str(err.value)
            report = Indexer(led, other).sync(reset=True)
            assert report.reset and led.cursor().identity.genesis_hash != m.chain.w3.eth.get_block(0)["hash"].to_0x_hex()
            assert led.counts()["jobs"] == 0 and led.counts()["observations"] == 1


def test_another_chain_id_is_refused(market, tmp_path):
    m = market
    with open_ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as led:
        ix = Indexer(led, m.chain)
        mine = ix.identity()
        led.init_cursor(ChainIdentity(1, mine.genesis_hash, mine.token, mine.registry, mine.market),
                        RegistryParams(1, 1), 1, "0x" + "00" * 32)
        with pytest.raises(LedgerError, match="chain id 1, the node is chain id 31337"):
            ix.sync()


def test_a_rewritten_history_is_refused(market, tmp_path):
    m = market
    with open_ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as led:
        snap = m.rpc("evm_snapshot")
        m.open()
        Indexer(led, m.chain).sync()
        assert m.rpc("evm_revert", [snap]) is True
        m.open(consumer=m.consumer2)  # another block at the same height
        with pytest.raises(LedgerError, match="reverted or reorganised"):
            Indexer(led, m.chain).sync()


def test_other_contracts_on_the_same_chain_are_refused(market, tmp_path):
    m = market
    with open_ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as led:
        Indexer(led, m.chain).sync()
        dep2 = deploy(m.chain.w3, m.deployer, m.url, MarketParams())
        with pytest.raises(LedgerError, match="market at"):
            Indexer(led, Chain(m.chain.w3, dep2)).sync()


def test_commit_reveal_finalize_is_indexed(market, tmp_path):
    m = market
    job_id, job, _ = m.open(max_tokens=100)
    salts = [keccak(b"salt%d" % i) for i in range(3)]
    outs = [OUT_A, OUT_A, OUT_B]
    m.advance(P.settle_window)  # the consumer walks away
    for i, p in enumerate(m.providers[:2]):  # the third never answers
        m.mc.commit(p, job_id, job, i, commitment(job_id, p.address, outs[i], 40, salts[i]))
    m.advance(P.commit_window)
    for i, p in enumerate(m.providers[:2]):
        m.mc.reveal(p, job_id, job, i, outs[i], 40, salts[i])
    m.advance(P.reveal_window)
    m.mc.finalize(m.outsider, job_id, job)
    with open_ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as led:
        Indexer(led, m.chain).sync()
        j = led.job(job_id)
        assert (j.status, [p.outcome for p in j.providers]) == ("settled", ["agreed", "agreed", "missing"])
        assert j.paid == 2 * 40 * PRICE and j.refund == 300 * PRICE - j.paid
        assert_mirrors_registry(m, led)
        assert led.evidence()[m.providers[2].address].missing == pytest.approx(1)


# ------------------------------------------------------------------------------ CLI

@pytest.fixture
def home_ledger(mesh_home, monkeypatch):
    """The CLI's default ledger: $MESH_HOME/ledger.sqlite, whatever the developer's environment says."""
    monkeypatch.delenv("MESH_LEDGER_URL", raising=False)
    return mesh_home / "ledger.sqlite"


def cli(*args):
    from cli.main import MeshGroup
    from cli.ledger import ledger

    root = MeshGroup(commands={"ledger": ledger})
    return CliRunner().invoke(root, ["ledger", *args], catch_exceptions=False)


def test_cli_sync_and_tables(market, home_ledger):
    m = market
    m.chain.deployment.save()  # what `mesh contracts deploy` leaves in $MESH_HOME
    ids = scenario(m)
    r = cli("jobs")
    assert r.exit_code == 0 and "mesh ledger sync" in r.output
    r = cli("sync", "--rpc", m.url)
    assert r.exit_code == 0, r.output
    assert "Indexed" in r.output and home_ledger.exists()
    assert "Up to date" in cli("sync", "--rpc", m.url).output
    r = cli("jobs")
    assert r.exit_code == 0 and "slashed" in r.output and "refunded" in r.output and "MESH" in r.output
    jobs = json.loads(cli("jobs", "--json", "--status", "settled").output)["jobs"]
    assert {j["job_id"] for j in jobs} == {"0x" + ids[k].hex() for k in ("agree", "slash", "replaced")}
    assert all(isinstance(j["escrow"], int) for j in jobs)
    provs = json.loads(cli("providers", "--json").output)["providers"]
    by = {p["address"]: p for p in provs}
    assert by[m.providers[2].address]["thawing"] == 12345 and by[m.providers[0].address]["stake"] == STAKE
    assert by[m.providers[1].address]["score"] < by[m.providers[0].address]["score"]
    r = cli("providers")
    assert m.providers[0].address in r.output and "score" in r.output
    earn = json.loads(cli("earnings", "--json").output)["earnings"]
    assert sum(e["earned"] for e in earn) == sum(j["paid"] for j in json.loads(cli("jobs", "--json").output)["jobs"])
    assert "total" in cli("earnings").output
    slashes = json.loads(cli("slashes", "--json").output)["slashes"]
    assert [s["provider"] for s in slashes] == [m.providers[1].address] and isinstance(slashes[0]["amount"], int)
    assert m.providers[1].address in cli("slashes").output


def test_cli_refuses_another_chain_with_a_hint(market, home_ledger):
    m = market
    m.chain.deployment.save()
    assert cli("sync", "--rpc", m.url).exit_code == 0
    with start_anvil() as node:
        w3 = connect(node.url)
        deploy(w3, dev_account(0), node.url, MarketParams()).save()
        r = cli("sync", "--rpc", node.url)
        assert r.exit_code == 1 and "--reset" in r.output and "Traceback" not in r.output
        r = cli("sync", "--rpc", node.url, "--reset", "--json")
        assert r.exit_code == 0 and json.loads(r.output)["reset"] is True
