"""Two people, several machines: a chain host, a providers' machine and a consumer's machine, each a
network namespace made here, joined by veth pairs on a bridge (10.77.0.0/24), each with a user
directory of its own (nothing shared but the network). The providers and the consumer find the
market with `mesh market join`; the providers listen on every interface and announce their
machine's address; the consumer, a new account funded by the faucet, gets a verified answer.

Needs root and `ip netns` (iproute2); skipped with the reason otherwise. The namespaces are
always deleted, whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshmarket.mesh.keys import dev_account

# No xdist group: it runs beside the rest (its hosts live in network namespaces of their own).

SUBNET = "10.77.0"
CHAIN_IP, PROVIDERS_IP, CONSUMER_IP = f"{SUBNET}.1", f"{SUBNET}.2", f"{SUBNET}.3"
RPC = f"http://{CHAIN_IP}:8545"
PROVIDERS = (1, 2, 3)
PASSWORD = {"MESH_PASSWORD": "consumer password"}
#: Generous: the machine is shared and slow; nothing asserts on time.
START_TIMEOUT, COMMAND_TIMEOUT = 300.0, 600.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _why_not() -> str | None:
    """Why this machine cannot run the test (None: it can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (run the suite as root to include this test)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"m13probe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Machines:
    """Three namespaces: 'chain' holds the bridge (10.77.0.1), 'providers' (.2) and 'consumer' (.3)
    are plugged into it by veth pairs."""

    def __init__(self, root: Path) -> None:
        tag = f"m13{os.getpid() % 100000}"
        self.ns = {role: f"{tag}-{role}" for role in ("chain", "providers", "consumer")}
        self.home = {role: root / role for role in self.ns}
        self.procs: list[subprocess.Popen] = []
        self.tag = tag

    def up(self) -> None:
        chain = self.ns["chain"]
        for ns in self.ns.values():
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", chain, "link", "add", "br0", "type", "bridge")
        _ip("-n", chain, "addr", "add", f"{CHAIN_IP}/24", "dev", "br0")
        _ip("-n", chain, "link", "set", "br0", "up")
        for role, address in (("providers", PROVIDERS_IP), ("consumer", CONSUMER_IP)):
            inner, outer = f"{self.tag}{role[0]}a", f"{self.tag}{role[0]}b"
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", inner, "netns", self.ns[role])
            _ip("link", "set", outer, "netns", chain)
            _ip("-n", chain, "link", "set", outer, "master", "br0", "up")
            _ip("-n", self.ns[role], "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", self.ns[role], "link", "set", inner, "up")
        for home in self.home.values():
            home.mkdir(parents=True)

    def env(self, role: str, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("MESH_RPC_URL", "MESH_ACCOUNT", "MESH_LEDGER_URL")}
        return {**env, "MESH_HOME": str(self.home[role]), "PYTHONUNBUFFERED": "1", **extra}

    def argv(self, role: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[role], sys.executable, "-m", "meshmarket.cli", *args]

    def mesh(self, role: str, *args: str, **env: str) -> str:
        """`mesh ARGS` on that machine; its stdout (a failure shows both streams)."""
        r = subprocess.run(self.argv(role, *args), env=self.env(role, **env), capture_output=True, text=True,
                           timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"mesh {' '.join(args)} on {role}:\n{r.stdout}\n{r.stderr}"
        assert "Traceback" not in r.stderr, r.stderr
        return r.stdout

    def start_provider(self, index: int) -> None:
        proc = subprocess.Popen(self.argv("providers", "provider", "start", "--account", f"dev:{index}"),
                                env=self.env("providers"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        ready, lines = threading.Event(), []

        def pump() -> None:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("ready "):
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.2):
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"provider dev:{index} did not start:\n{''.join(lines)}"

    def down(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)
        record = self.home["chain"] / "anvil.json"
        if record.exists():  # the detached Anvil `mesh chain up` started in the chain's namespace
            try:
                os.kill(int(json.loads(record.read_text())["pid"]), 15)
            except (ProcessLookupError, ValueError, KeyError):
                pass
        for ns in self.ns.values():
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def machines(tmp_path):
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    m = Machines(tmp_path)
    try:
        m.up()
        yield m
    finally:
        m.down()


def test_a_consumer_on_another_machine_joins_and_gets_a_verified_answer(machines):
    m = machines
    steps: dict[str, float] = {}
    t0 = time.monotonic()

    def lap(name: str) -> None:
        steps[name] = round(time.monotonic() - t0 - sum(steps.values()), 1)

    # The chain host: a chain other machines reach, the market on it, MESH for the providers.
    m.mesh("chain", "chain", "up", "--host", "0.0.0.0", "--detach")
    deployed = json.loads(m.mesh("chain", "contracts", "deploy", "--json"))
    m.mesh("chain", "token", "faucet", *(dev_account(i).address for i in PROVIDERS))
    lap("chain host")

    def providers() -> list[dict]:
        """The providers' machine joins (found by scanning the chain), registers three providers that
        listen on every interface and announce this machine's address, and starts them."""
        joined = json.loads(m.mesh("providers", "market", "join", RPC, "--json"))
        assert joined["market"] == deployed["market"] and joined["rpc_url"] == RPC

        def register_and_start(i: int) -> dict:
            registered = json.loads(m.mesh("providers", "provider", "register", "--account", f"dev:{i}", "--price",
                                           "10", "--stake", "100", "--host", "0.0.0.0", "--announce", PROVIDERS_IP,
                                           "--port", str(4000 + i), "--json"))
            m.start_provider(i)
            return registered

        with ThreadPoolExecutor(len(PROVIDERS)) as pool:
            return list(pool.map(register_and_start, PROVIDERS))

    def consumer() -> str:
        """The consumer's machine, meanwhile: joins, makes a new account, funds it (MESH, ETH for gas)."""
        m.mesh("consumer", "market", "join", RPC, "--market", deployed["market"])
        me = json.loads(m.mesh("consumer", "account", "new", "--json", **PASSWORD))["address"]
        m.mesh("consumer", "token", "faucet", me, "--amount", "100")
        return me

    with ThreadPoolExecutor(2) as pool:
        registered, me = pool.submit(providers), pool.submit(consumer)
        registered, me = registered.result(), me.result()
    assert all(r["endpoint"].startswith(f"/ip4/{PROVIDERS_IP}/tcp/") for r in registered)
    lap("providers up, consumer funded")
    (model,) = json.loads(m.mesh("consumer", "models", "--json"))["models"]
    assert model["name"] and all(o["manifest"] == "ok" for o in model["offers"]), model
    lap("models")
    receipt = json.loads(m.mesh("consumer", "ask", "What is the capital of France?", "--max-tokens", "8", "--yes", "--min-pool", "0",
                                "--json", "--model", model["model_hash"], "--account", me, **PASSWORD))
    lap("ask")
    print("steps (s):", steps)
    assert receipt["outcome"] == "agreed" and receipt["agreement"] == "3/3", receipt
    assert {p["address"] for p in receipt["providers"]} == {dev_account(i).address for i in PROVIDERS}
    assert receipt["text"] and receipt["paid"] + receipt["refund"] == receipt["escrow"]
