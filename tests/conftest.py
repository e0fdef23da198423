"""Fixtures that start real parts: Anvil on a free port (once per session, reverted to a snapshot
around every test), the deployed contracts, funded and registered dev accounts, a temp MESH_HOME.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from eth_utils import keccak

from meshmarket.mesh.anvil import start_anvil
from meshmarket.contracts.deploy import deploy
from meshmarket.mesh.chain import Chain, connect
from meshmarket.mesh.config import MarketParams
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.market import MarketClient

MODEL = keccak(b"test-model.gguf")
OTHER_MODEL = keccak(b"other-model.gguf")
PRICE = 10  # base units per output token
FUNDS = 10**12  # minted to every dev account but the deployer
STAKE = 10**9


#: How the two xdist workers share the suite (`--dist loadgroup`). A group runs on one worker, one
#: test after another; everything else goes wherever a worker is free. Groups exist only where tests
#: share something costly or must not overlap: the shared devnet (`meshnet`: its provider
#: processes are started once per worker that needs it, so its tests stay on one worker), the
#: gateway's devnet (`gateway`: test_gateway.py and the explorer), and `heavy` (the crash test and
#: the 1,050-peer test, each a core-bound process: one after the other). The demo, the CLI and the
#: network namespaces start their own small markets and run beside the rest.
PROCESS_TESTS = ("test_demo.py", "test_cli.py", "test_netns.py", "test_gateway.py", "test_explorer.py")


#: The quick tier (`./setup.sh --test quick`, about a minute): what runs in this process on the
#: session's Anvil and SQLite, without a provider process, the model, PostgreSQL or a browser.
#: Everything is still in the full suite; this is the tier a developer runs after each change.
SLOW_FIXTURES = frozenset({"meshnet", "engine", "served", "served_session", "pg_cluster", "pg_url"})
SLOW_FILES = frozenset({*PROCESS_TESTS, "test_crash.py", "test_invariants.py", "test_engine.py", "test_batch.py",
                        "test_scorer.py", "test_prompt.py", "test_fuzz.py", "test_artifacts.py", "test_attacks.py"})


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "meshnet" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("meshnet"))
        params = getattr(item, "callspec", None)
        postgres = params is not None and params.params.get("ledger_url") == "postgresql"
        if not (SLOW_FIXTURES & set(item.fixturenames) or item.path.name in SLOW_FILES or postgres
                or item.get_closest_marker("slow") or item.get_closest_marker("xdist_group")):
            item.add_marker(pytest.mark.quick)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Model facts (GGUF metadata, sha256) are cached per user: keep the suite's cache in its own
    temp dir, shared by the session and the processes it starts, never in ~/.cache."""
    path = tmp_path_factory.mktemp("model-cache")
    old = os.environ.get("MESH_CACHE")
    os.environ["MESH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MESH_CACHE", None)
    else:
        os.environ["MESH_CACHE"] = old


@pytest.fixture(autouse=True)
def mesh_home(tmp_path, monkeypatch):
    """Every test gets its own user directory: nothing leaks between tests or into ~/."""
    monkeypatch.setenv("MESH_HOME", str(tmp_path / "mesh-home"))
    monkeypatch.setenv("MESH_KDF_N", "16")  # cheap scrypt for throwaway test keystores
    monkeypatch.delenv("MESH_RPC_URL", raising=False)
    monkeypatch.delenv("MESH_LEDGER_URL", raising=False)
    monkeypatch.delenv("MESH_PASSWORD", raising=False)
    return tmp_path / "mesh-home"


@dataclass
class Market:
    """The deployed market with four registered providers (P[0..3]) and two consumers."""

    url: str
    chain: Chain
    mc: MarketClient
    deployer: object
    providers: list
    consumer: object
    consumer2: object
    outsider: object

    def rpc(self, method: str, params: list | None = None):
        return self.chain.w3.provider.make_request(method, params or [])["result"]

    def advance(self, seconds: int) -> None:
        """Move the chain clock forward and mine, so the next tx sees the new time."""
        self.rpc("evm_increaseTime", [seconds])
        self.rpc("evm_mine")

    def set_next_timestamp(self, ts: int) -> None:
        """Pin the next block's timestamp. Gas estimation would run at another time, so the
        next transactions use a fixed gas limit and their reverts are read from the receipt."""
        self.rpc("evm_setNextBlockTimestamp", [ts])
        self.chain.fixed_gas = 2_000_000

    def now(self) -> int:
        return self.chain.w3.eth.get_block("latest")["timestamp"]

    def open(self, max_tokens=100, price_cap=PRICE, consumer=None, **kw):
        """Open and draw a job; (job id, the drawn Job)."""
        consumer = consumer or self.consumer
        job_id, job, _ = self.mc.open_job(consumer, MODEL, keccak(b"prompt"), max_tokens, price_cap, **kw)
        job, _ = self.mc.draw_seats(consumer, job)
        return job_id, job


@pytest.fixture(scope="session")
def anvil_node():
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def market_session(anvil_node):
    w3 = connect(anvil_node.url)
    deployer = dev_account(0)
    dep = deploy(w3, deployer, anvil_node.url, MarketParams())
    chain = Chain(w3, dep)
    mc = MarketClient(chain)
    providers = [dev_account(i) for i in (1, 2, 3, 4)]
    consumer, consumer2, outsider = dev_account(5), dev_account(6), dev_account(7)
    for acct in providers + [consumer, consumer2, outsider]:
        chain.transact(deployer, chain.token.functions.mint(acct.address, FUNDS))
    for i, p in enumerate(providers):
        mc.register(p, MODEL, keccak(b"manifest-%d" % i), PRICE)
        mc.stake(p, STAKE)
    for c in (consumer, consumer2):
        chain.ensure_allowance(c, chain.registry.address, FUNDS)
    return Market(anvil_node.url, chain, mc, deployer, providers, consumer, consumer2, outsider)


@contextmanager
def reverted(deployment):
    """The session's chain as it is now, and exactly as it was again after the test."""
    snap = deployment.rpc("evm_snapshot")
    try:
        yield deployment
    finally:
        deployment.chain.fixed_gas = None
        assert deployment.rpc("evm_revert", [snap]) is True


@pytest.fixture
def market(market_session):
    """The session's market, reverted to its pristine state after the test."""
    with reverted(market_session) as m:
        yield m


@pytest.fixture(scope="session")
def engine():
    """The real llama.cpp engine on the shipped model, loaded once per test process."""
    from meshmarket.provider.engine import LlamaCppEngine, default_model_path

    eng = LlamaCppEngine(default_model_path(), n_ctx=2048, n_threads=1)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def served_session(anvil_node):
    """A deployment on the session's Anvil where dev:1..dev:4 offer the real model at PRICE (with
    real signed manifests) and dev:5, dev:6 are funded consumers: for in-process providers."""
    from meshmarket.provider.engine import default_model_path
    from meshmarket.provider.modelfile import file_sha256
    from tests.harness import Served, signed_manifest

    w3 = connect(anvil_node.url)
    deployer = dev_account(0)
    chain = Chain(w3, deploy(w3, deployer, anvil_node.url, MarketParams()))
    mc = MarketClient(chain)
    model_hash = bytes.fromhex(file_sha256(default_model_path())[2:])
    manifests = {}
    for i in (1, 2, 3, 4, 5, 6):
        chain.transact(deployer, chain.token.functions.mint(dev_account(i).address, FUNDS))
    for i in (1, 2, 3, 4):
        acct = dev_account(i)
        manifests[i] = signed_manifest(acct, str(default_model_path()))
        mc.register(acct, model_hash, bytes.fromhex(manifests[i].manifest_hash()[2:]), PRICE)
        mc.stake(acct, STAKE)
    for i in (5, 6):
        chain.ensure_allowance(dev_account(i), chain.registry.address, FUNDS)
    return Served(chain, mc, model_hash, manifests)


@pytest.fixture
def served(served_session):
    """The served deployment, reverted to its pristine state after the test."""
    with reverted(served_session) as s:
        yield s


#: The devnet's pools. The open market: three honest providers (every job seats all three) and a
#: spare registered without stake (never drawn until a test stakes it). The "court" mesh: two
#: honest providers and a cheater (its jobs seat all three). A dispute in the court mesh cannot draw
#: a full jury of three from it, so its jury comes from the model's open market: OPEN_POOL.
OPEN_POOL, SPARE = (1, 2, 3), 11
COURT, COURT_CHEATER = (4, 7, 8), 7


@pytest.fixture(scope="session")
def meshnet():
    """A local market: its own Anvil, and provider processes started through the CLI in two pools
    (OPEN_POOL + SPARE in the open market, COURT in the "court" mesh). Tests open fresh jobs;
    nothing is reverted under them, and a test that changes a pool restores it."""
    from tests.devnet import start_meshnet, temp_root

    prices = dict.fromkeys((*OPEN_POOL, SPARE, *COURT), 10)
    net = start_meshnet(temp_root(), prices, cheaters=(COURT_CHEATER,), extra=("--claim-poll", "0.5"),
                        groups=dict.fromkeys(COURT, "court"), stakes={SPARE: 0})
    for c in (5, 6):
        net.fund(c)
        net.chain.ensure_allowance(dev_account(c), net.deployment.registry, 10**15)
    try:
        yield net
    finally:
        net.close()
