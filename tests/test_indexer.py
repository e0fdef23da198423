"""The indexer against the real v2 contracts on Anvil (tests/conftest.py's `market`): every event
of a job's life (open, draw, add a seat, settle agreed, contested and resolved, disputed and judged
with a jury and evidence, commit/reveal/finalize, a seat left out, expire) must land in the ledger,
which must mirror the registry's state to the base unit, sync incrementally and idempotently,
resume after a crash, and refuse a different chain or a rewritten history. The main scenario also
runs against PostgreSQL; the CLI (`mesh ledger ...`) is driven at the end.

Seats are drawn by the contracts from the block hash, so the scenario never assumes who sits where:
it signs with whichever account was drawn.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner
from eth_utils import keccak
from sqlalchemy import create_engine, text

from meshmarket.ledger import ChainIdentity, RegistryParams, open_ledger
from meshmarket.ledger.indexer import Indexer, chain_event
from meshmarket.ledger.outcomes import OPEN_MARKET
from meshmarket.ledger.records import checksum
from meshmarket.mesh.anvil import start_anvil
from meshmarket.contracts.deploy import deploy, get_create_address
from meshmarket.mesh.chain import Chain, connect
from meshmarket.mesh.config import MarketParams
from meshmarket.mesh.errors import LedgerError
from meshmarket.mesh.events import MARKET_EVENTS, REGISTRY_EVENTS, EventDecoder
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.market import HARD, PASS, ResultClaim, commitment, pack_verdicts, vote_commitment
from meshmarket.mesh.protocol import output_hash, pack_tokens
from tests.conftest import FUNDS, MODEL, PRICE, STAKE
from tests.pg import ledger_url, pg_cluster, pg_url  # noqa: F401 — fixtures

P = MarketParams()
PROMPT = b"prompt"  # the conftest's jobs use keccak(b"prompt") as promptHash: this is their request


def answer(text: str, count: int) -> tuple[bytes, bytes, bytes]:
    """(output hash, text hash, tokens) of an answer of `count` tokens, as a seat signs it and as
    evidence shows it to a jury."""
    tokens = [(hash(text) + i) % 50_000 for i in range(count)]
    return output_hash(text, tokens), keccak(text.encode()), pack_tokens(tokens)


GOOD, BAD = answer("the honest answer", 30), answer("a lie", 30)


def join_pool(m, devs=(8, 9)) -> list:
    """More providers in the open market pool: enough that a jury can be drawn outside the seats."""
    out = []
    for i in devs:
        a = dev_account(i)
        m.chain.transact(m.deployer, m.chain.token.functions.mint(a.address, FUNDS))
        m.mc.register(a, MODEL, keccak(b"manifest-extra-%d" % i), PRICE)
        m.mc.stake(a, STAKE)
        out.append(a)
    return out


class Signers:
    def __init__(self, m, accounts) -> None:
        self.m = m
        self.by_address = {a.address: a for a in accounts}

    def of(self, address: str):
        return self.by_address[checksum(address)]

    def results(self, job, outputs, count: int = 30) -> list:
        """Each seat's signed result, `outputs[i]` for seat i (None: no result)."""
        m = self.m
        return [None if out is None else
                ResultClaim(job.job_id, out, count).sign(self.of(job.seats[i]), m.chain.chain_id, m.chain.market.address)
                for i, out in enumerate(outputs)]


def scenario(m) -> dict:
    """Every event of protocol v2; returns {name: (job id, job, contest or None)}."""
    extra = join_pool(m)
    sig = Signers(m, [*m.providers, *extra])
    A, B = GOOD[0], BAD[0]
    ids = {}
    _, job = m.open()
    m.mc.settle(m.consumer, job, sig.results(job, [A, A, A]))
    ids["agreed"] = job
    _, job = m.open()
    ids["provisional"] = (job, m.mc.contest_of(m.mc.settle(m.consumer, job, sig.results(job, [A, B, A]))))
    ids["judged"] = judged_job(m, sig)
    ids["finalized"] = finalized_job(m, sig)
    _, job = m.open()
    m.advance(P.delivery_window + P.claim_window)  # seat 2 never answered nor committed: left out
    m.mc.settle(m.consumer, job, sig.results(job, [A, A, None]))
    ids["missing"] = job
    _, job = m.open()
    job, _, _ = m.mc.add_seat(m.consumer, job)
    m.mc.settle(m.consumer, job, sig.results(job, [A, A, A, A]))
    ids["added"] = job
    _, job, _ = m.mc.open_job(m.consumer2, MODEL, keccak(PROMPT), 10, PRICE)
    m.rpc("anvil_mine", [hex(257)])  # its seed block is out of reach: it can never be drawn
    m.mc.expire(m.outsider, job)
    ids["expired"] = job
    m.advance(P.dispute_window)
    m.mc.resolve(m.outsider, *ids["provisional"])
    paid = ids["agreed"].seats[0]
    m.mc.withdraw_earnings(sig.of(paid))
    m.mc.request_unstake(m.providers[2], 12345)
    m.mc.request_unstake(extra[1], 777)
    m.mc.deposit(m.consumer2, 5000)
    m.mc.withdraw_credit(m.consumer2)
    m.advance(P.thaw_period)
    m.mc.withdraw_stake(extra[1])
    m.mc.deregister(extra[1])
    _, job = m.open(max_tokens=300)
    ids["open"] = job
    _, job = m.open()
    # A seat that put all its free stake to thaw after the draw: its lock takes it back (ThawReclaimed).
    # Seat 1 or 2 (both sign B), never providers[2]: the CLI test reads its thaw of 12345 back.
    dodger = sig.of(next(s for s in job.seats[1:3] if checksum(s) != m.providers[2].address))
    m.mc.request_unstake(dodger, m.chain.registry.functions.freeStake(dodger.address).call())
    ids["contested"] = (job, m.mc.contest_of(m.mc.settle(m.consumer, job, sig.results(job, [A, B, B]))))
    return {"ids": ids, "signers": sig, "withdrew": paid}


def judged_job(m, sig):
    """A contested job the consumer disputes: evidence for every seat, the jury votes seat 1 (the
    liar) a hard fail, one juror never reveals."""
    _, job = m.open(max_tokens=50)
    outs = [GOOD, BAD, GOOD]
    contest = m.mc.contest_of(m.mc.settle(m.consumer, job, sig.results(job, [o[0] for o in outs])))
    m.mc.dispute(m.consumer, job, contest, PROMPT)
    jurors, _ = m.mc.draw_jury(m.outsider, job, contest)
    assert jurors, "test setup: a jury must be drawn (three providers outside the seats)"
    for seat, (_, text_hash, tokens) in enumerate(outs):
        m.mc.post_evidence(m.outsider, job, contest, seat, text_hash, tokens)
    m.advance(P.court_phase)
    verdicts = pack_verdicts({0: PASS, 1: HARD, 2: PASS})
    salts = {j: keccak(j.encode()) for j in jurors}
    for j in jurors:
        m.mc.commit_vote(sig.of(j), job.job_id, vote_commitment(job.job_id, j, verdicts, salts[j]))
    m.advance(P.court_phase)
    for j in jurors[:-1] if len(jurors) > 1 else jurors:
        m.mc.reveal_vote(sig.of(j), job.job_id, verdicts, salts[j])
    m.advance(P.court_phase)
    m.mc.resolve(m.outsider, job, contest)
    return job, contest, jurors


def finalized_job(m, sig):
    """The consumer walks away: all three seats commit, two reveal (they agree), the third never
    reveals and is slashed at finalize."""
    _, job = m.open()
    m.advance(P.delivery_window)
    salts = [keccak(b"salt%d" % i) for i in range(3)]
    for i in range(3):
        provider = job.seats[i]
        m.mc.commit(sig.of(provider), job, i, commitment(job.job_id, i, provider, GOOD[0], 25, salts[i]))
    m.advance(P.claim_window)
    for i in range(2):
        m.mc.reveal(m.outsider, job, i, GOOD[0], 25, salts[i])
    m.advance(P.reveal_window)
    m.mc.finalize(m.outsider, job)
    return job


def assert_mirrors_registry(m, led, accounts) -> None:
    for a in accounts:
        chain = m.mc.account(a.address)
        row = led.provider(a.address)
        assert (row.stake, row.locked, row.owed, row.thawing, row.price) == (
            chain["stake"], chain["locked"], chain["owed"], chain["thawing"], chain["price"]), a.address
        assert (row.thaw_ready_at or 0) == chain["thaw_ready_at"]
        assert row.registered == chain["listed"]
        if row.registered:
            assert row.model_hash == "0x" + chain["model_hash"].hex()
            assert row.group == "0x" + chain["group"].hex()
            assert row.manifest_hash == "0x" + chain["manifest_hash"].hex()


def jid(job) -> str:
    return "0x" + job.job_id.hex()


def test_ledger_mirrors_the_chain(market, ledger_url):  # noqa: F811
    m = market
    sc = scenario(m)
    ids, sig = sc["ids"], sc["signers"]
    with open_ledger(ledger_url) as led:
        report = Indexer(led, m.chain).sync()
        assert report.up_to_date and report.events > 0
        assert_mirrors_registry(m, led, sig.by_address.values())
        out = {k: led.job(jid(v[0] if isinstance(v, tuple) else v)) for k, v in ids.items()}
        outcomes = {k: [s.outcome for s in j.seats] for k, j in out.items()}
        assert outcomes["agreed"] == ["agreed"] * 3 and out["agreed"].refund == 100 * PRICE * 4 - 3 * 30 * PRICE
        assert outcomes["provisional"] == ["provisional", "minority", "provisional"]
        assert outcomes["judged"] == ["passed", "hard_fail", "passed"]
        assert outcomes["finalized"] == ["agreed", "agreed", "slashed"]
        assert outcomes["missing"] == ["agreed", "agreed", "missing"]
        assert outcomes["added"] == ["agreed"] * 4 and out["added"].escrow == 100 * PRICE * 5
        assert [s.added for s in out["added"].seats] == [False, False, False, True]
        assert (out["expired"].status, out["expired"].seats, out["expired"].drawn_at) == ("refunded", (), None)
        assert (out["open"].status, out["open"].escrow) == ("drawn", 300 * PRICE * 4)
        assert out["contested"].status == "contested" and out["contested"].group == OPEN_MARKET
        assert all(out[k].status == "settled" for k in ("agreed", "provisional", "judged", "finalized", "added"))
        job, contest = ids["contested"]
        assert [s.locked for s in out["contested"].seats] == list(contest.locks[:3])
        assert [s.token_count for s in out["finalized"].seats] == [25, 25, None]
        # The court: who judged, who revealed, who was paid.
        d = out["judged"].dispute
        jurors = ids["judged"][2]
        assert d.disputer == m.consumer.address and d.bond == 50 * PRICE and d.bond_refund == 50 * PRICE
        assert [x.juror for x in d.jurors] == jurors and all(x.committed for x in d.jurors)
        paid = [x.paid for x in d.jurors]
        assert paid == ([d.share] * (len(jurors) - 1) + [0] if len(jurors) > 1 else [d.share])
        assert all(s.evidence_posted for s in out["judged"].seats)
        slashed = {s.provider for s in led.slashes()}
        assert slashed == {out["judged"].seats[1].provider, out["finalized"].seats[2].provider}
        earned = {e.provider: e for e in led.earnings()}
        assert earned[sc["withdrew"]].withdrawn > 0 and earned[sc["withdrew"]].owed == m.mc.account(sc["withdrew"])["owed"]
        assert sum(e.jury for e in earned.values()) == d.share * sum(1 for x in d.jurors if x.revealed)
        counts = led.counts()
        # Deposited and CreditWithdrawn are kept in the event log (consumer credit is not a table).
        assert counts["chain_events"] == sum(1 for _ in _all_logs(m))
        assert counts["jobs"] == 9 and counts["disputes"] == 1
        # Discovery: who a job could draw now. P2 unstaked a little: still enough for any small job.
        free2 = m.chain.registry.functions.freeStake(m.providers[2].address).call()
        assert led.provider(m.providers[2].address).free_stake == free2
        reg = m.chain.registry.functions
        need = reg.lockFor(100, PRICE).call() * P.max_lock_share  # the dodger's stake is thawing or locked
        listed = {a.address for a in sig.by_address.values()
                  if m.mc.account(a.address)["listed"] and reg.freeStake(a.address).call() >= need}
        assert {c.address for c in led.candidates(MODEL, PRICE, 100)} == listed
        assert led.candidates(MODEL, PRICE - 1, 100) == [] and led.candidates(keccak(b"other"), PRICE, 1) == []


def _all_logs(m):
    return m.chain.w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest",
                                    "address": [m.chain.registry.address, m.chain.market.address],
                                    "topics": [EventDecoder.for_chain(m.chain).topics()]})


def _web3_value(v):
    """web3's decoded value in the ledger's JSON form (hex bytes, checksummed addresses)."""
    if isinstance(v, bytes):
        return "0x" + v.hex()
    if isinstance(v, str) and v.startswith("0x"):
        return checksum(v)
    if isinstance(v, (list, tuple)):
        return [_web3_value(x) for x in v]
    if hasattr(v, "items"):  # a struct (AttributeDict by component name)
        return {k: _web3_value(x) for k, x in v.items()}
    return v


def test_decoder_agrees_with_web3(market):
    """The one decoder (mesh.events) reads every event of the scenario exactly as web3's
    process_log does (same names, same typed values), from web3's logs and from the raw JSON-RPC
    answer the indexer reads; the ledger's rows get its JSON form."""
    m = market
    scenario(m)
    dec = EventDecoder.for_chain(m.chain)
    logs = list(_all_logs(m))
    raw = m.chain.w3.provider.make_request("eth_getLogs", [{
        "fromBlock": "0x0", "toBlock": "latest", "address": [m.chain.registry.address, m.chain.market.address],
        "topics": [dec.topics()]}])["result"]
    assert len(raw) == len(logs)
    assert {dec.decode(log).name for log in logs} == set(REGISTRY_EVENTS) | set(MARKET_EVENTS)
    for log, rlog in zip(logs, raw):
        ours = dec.decode(log)
        contract = m.chain.registry if ours.contract == "registry" else m.chain.market
        theirs = getattr(contract.events, ours.name)().process_log(log)
        assert dict(ours.args) == dict(theirs["args"]), ours.name
        assert (ours.block_number, ours.log_index, ours.tx_hash, ours.block_hash) == (
            theirs["blockNumber"], theirs["logIndex"], bytes(theirs["transactionHash"]), bytes(theirs["blockHash"]))
        assert replace(dec.decode(rlog), block_time=None) == replace(ours, block_time=None)
        row = chain_event(ours, 0)
        assert row.args == {k: _web3_value(v) for k, v in theirs["args"].items()}, ours.name
        assert (row.tx_hash, row.block_hash) == ("0x" + ours.tx_hash.hex(), "0x" + ours.block_hash.hex())
        json.dumps(row.args)  # what the ledger stores


def test_sync_is_incremental_idempotent_and_bounded(market, tmp_path):
    m = market
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    with open_ledger(url) as led:
        first = Indexer(led, m.chain, batch_blocks=5).sync()
        assert first.batches == -(-(first.to_block - first.from_block + 1) // 5)
        assert Indexer(led, m.chain).sync().events == 0  # nothing new
        ids = scenario(m)["ids"]
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
        assert led.job(jid(ids["finalized"])).status == "settled"


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
        assert_mirrors_registry(m, led, m.providers)
    assert max(s for s in spans if s <= 8) <= 8 and spans[0] > 8


def test_a_restarted_chain_is_refused_then_reset(market, tmp_path):
    m = market
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    with open_ledger(url) as led:
        Indexer(led, m.chain).sync()
        led.record_observation(m.providers[0].address, "timeout")
        with start_anvil() as node:  # same deployer and nonces: the same contract addresses
            w3 = connect(node.url)
            deployer = dev_account(0).address  # its nonce at the session's deployment (other fixtures may go first)
            nonce = next(n for n in range(1000) if get_create_address(deployer, n) == m.chain.token.address)
            assert w3.provider.make_request("anvil_setNonce", [deployer, hex(nonce)]).get("error") is None
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


def test_a_job_indexed_across_many_batches_is_the_job_indexed_at_once(market, tmp_path):
    """One batch per block: every job's events (open, draw, contest, dispute, votes, settlement)
    land in different transactions of the ledger, and the result is the same to the last row."""
    m = market
    sc = scenario(m)
    accounts = list(sc["signers"].by_address.values())

    def state(led):
        jobs = led.jobs(limit=100)
        return (led.counts(), [led.provider(a.address) for a in accounts], led.evidence(), jobs)

    with open_ledger(f"sqlite:///{tmp_path / 'once.sqlite'}") as led:
        led.add_local_account(m.consumer.address)
        Indexer(led, m.chain).sync()
        once = state(led)
    with open_ledger(f"sqlite:///{tmp_path / 'each.sqlite'}") as led:
        led.add_local_account(m.consumer.address)
        Indexer(led, m.chain, batch_blocks=1).sync()
        assert state(led) == once
        assert_mirrors_registry(m, led, accounts)


# ------------------------------------------------------------------------------ CLI

@pytest.fixture
def home_ledger(mesh_home, monkeypatch):
    """The CLI's default ledger: $MESH_HOME/ledger.sqlite, whatever the developer's environment says."""
    monkeypatch.delenv("MESH_LEDGER_URL", raising=False)
    return mesh_home / "ledger.sqlite"


def cli(*args):
    from meshmarket.cli.main import MeshGroup
    from meshmarket.cli.ledger import ledger

    root = MeshGroup(commands={"ledger": ledger})
    return CliRunner().invoke(root, ["ledger", *args], catch_exceptions=False)


def test_cli_sync_and_tables(market, home_ledger):
    m = market
    m.chain.deployment.save()  # what `mesh contracts deploy` leaves in $MESH_HOME
    sc = scenario(m)
    ids = sc["ids"]
    r = cli("jobs")
    assert r.exit_code == 0 and "mesh ledger sync" in r.output
    r = cli("sync", "--rpc", m.url)
    assert r.exit_code == 0, r.output
    assert "Indexed" in r.output and home_ledger.exists()
    assert "Up to date" in cli("sync", "--rpc", m.url).output
    r = cli("jobs")
    assert r.exit_code == 0 and "hard_fail" in r.output and "refunded" in r.output and "MESH" in r.output
    jobs = json.loads(cli("jobs", "--json", "--status", "settled").output)["jobs"]
    settled = [ids[k] for k in ("agreed", "missing", "finalized", "added")] + [ids[k][0] for k in ("provisional", "judged")]
    assert {j["job_id"] for j in jobs} == {jid(job) for job in settled}
    assert all(isinstance(j["escrow"], int) for j in jobs)
    assert json.loads(cli("jobs", "--json", "--status", "contested").output)["jobs"][0]["job_id"] == jid(ids["contested"][0])
    provs = json.loads(cli("providers", "--json", "--all").output)["providers"]  # with the one that left
    by = {p["address"]: p for p in provs}
    assert by[m.providers[2].address]["thawing"] == 12345
    liar = ids["judged"][0].seats[1]
    honest = next(a for a in by if a not in {liar, ids["finalized"].seats[2]})
    assert by[liar]["score"] < by[honest]["score"]
    r = cli("providers")
    assert honest in r.output and "score" in r.output
    earn = json.loads(cli("earnings", "--json").output)["earnings"]
    paid = sum(j["paid"] for j in json.loads(cli("jobs", "--json").output)["jobs"])
    assert sum(e["earned"] for e in earn) == paid + sum(e["jury"] for e in earn) and paid > 0
    assert "total" in cli("earnings").output
    slashes = json.loads(cli("slashes", "--json").output)["slashes"]
    assert {s["provider"] for s in slashes} == {liar, ids["finalized"].seats[2]}
    assert all(isinstance(s["amount"], int) for s in slashes) and liar in cli("slashes").output


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
