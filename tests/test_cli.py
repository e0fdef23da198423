"""The `mesh` CLI against a real Anvil: deploy, faucet, accounts, and clear errors (no tracebacks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from meshmarket.mesh.anvil import free_port, start_anvil
from meshmarket.cli.main import main
from meshmarket.mesh.keys import dev_account


def run(*args, env=None, input=None):
    result = CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)
    return result


@pytest.fixture
def fresh_anvil():
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()


def test_deploy_faucet_balance_end_to_end(fresh_anvil, mesh_home):
    r = run("contracts", "deploy", "--rpc", fresh_anvil.url, "--json")
    assert r.exit_code == 0, r.output
    dep = json.loads(r.output)
    assert dep["chain_id"] == 31337 and (mesh_home / "deployment.json").exists()
    r = run("token", "faucet", dev_account(3).address, "--amount", "12.5")
    assert r.exit_code == 0, r.output
    assert "12.500000 MESH" in r.output
    r = run("token", "balance", dev_account(3).address, "--json")
    assert json.loads(r.output)["balances"][dev_account(3).address] == 12_500_000
    r = run("contracts", "show")
    assert dep["market"] in r.output
    r = run("token", "deposit", "2.5", "--account", "dev:3")
    assert r.exit_code == 0 and "credit 2.500000 MESH" in r.output, r.output
    r = run("token", "credit", "--account", "dev:3", "--json")
    assert json.loads(r.output)["credit"] == 2_500_000
    r = run("token", "withdraw-credit", "--account", "dev:3")
    assert r.exit_code == 0 and "withdrew 2.500000 MESH" in r.output
    r = run("token", "withdraw-credit", "--account", "dev:3")
    assert r.exit_code == 1 and "no credit to withdraw" in r.output


def test_no_node_is_a_clear_error(mesh_home):
    url = f"http://127.0.0.1:{free_port()}"
    r = run("contracts", "deploy", "--rpc", url)
    assert r.exit_code == 1
    assert "no Ethereum node answers" in r.output and "mesh chain up" in r.output
    assert "Traceback" not in r.output


def test_not_deployed_is_a_clear_error(fresh_anvil, mesh_home):
    r = run("token", "balance", "--rpc", fresh_anvil.url)
    assert r.exit_code == 1 and "mesh contracts deploy" in r.output


def test_restarted_chain_is_detected(mesh_home):
    with start_anvil() as node:
        assert run("contracts", "deploy", "--rpc", node.url).exit_code == 0
        port = node.port
    with start_anvil(port):  # a new chain at the same URL: same chain id, no contracts
        r = run("token", "balance")
        assert r.exit_code == 1 and "not on this chain" in r.output and "deploy" in r.output


def test_bad_amount_is_refused(fresh_anvil, mesh_home):
    run("contracts", "deploy", "--rpc", fresh_anvil.url)
    r = run("token", "faucet", "--amount", "1.1234567")
    assert r.exit_code == 2 and "more than 6 decimals" in r.output
    r = run("token", "faucet", "not-an-address")
    assert r.exit_code == 2 and "not an Ethereum address" in r.output


def test_accounts_are_encrypted_keystores(mesh_home):
    env = {"MESH_PASSWORD": "correct horse"}
    r = run("account", "new", env=env)
    assert r.exit_code == 0, r.output
    address = r.output.split()[0]
    key = dev_account(9).key.hex()
    r = run("account", "import", env=env, input=key + "\n")
    assert r.exit_code == 0, r.output
    assert dev_account(9).address in r.output
    listed = run("account", "list").output
    assert address in listed and dev_account(9).address in listed
    for path in (mesh_home / "keystore").glob("*.json"):
        text = path.read_text()
        assert key.removeprefix("0x") not in text and "crypto" in json.loads(text)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    r = run("account", "import", env=env, input="zz\n")
    assert r.exit_code == 1 and "not a valid private key" in r.output


def test_wrong_keystore_password_refused(fresh_anvil, mesh_home):
    run("account", "import", env={"MESH_PASSWORD": "right"}, input=dev_account(8).key.hex() + "\n")
    r = run("contracts", "deploy", "--rpc", fresh_anvil.url, "--account", dev_account(8).address,
            env={"MESH_PASSWORD": "wrong"})
    assert r.exit_code == 1 and "wrong password" in r.output


def test_chain_up_detach_and_down(mesh_home):
    port = free_port()
    env = {**os.environ, "MESH_HOME": str(mesh_home)}
    up = subprocess.run([sys.executable, "-m", "meshmarket.cli", "chain", "up", "--port", str(port), "--detach"],
                        env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == f"http://127.0.0.1:{port}"
    try:
        st = run("chain", "status", "--rpc", f"http://127.0.0.1:{port}", "--json")
        assert json.loads(st.output)["chain_id"] == 31337
    finally:
        down = run("chain", "down")
    assert down.exit_code == 0 and "stopped" in down.output


def test_another_chain_at_the_url_is_a_clear_error(mesh_home):
    with start_anvil() as node:
        assert run("contracts", "deploy", "--rpc", node.url).exit_code == 0
        port = node.port
    with start_anvil(port, chain_id=1337):
        r = run("token", "balance")
        assert r.exit_code == 1 and "is chain 1337" in r.output and "31337" in r.output


def test_two_providers_share_a_user_directory(fresh_anvil, mesh_home):
    assert run("contracts", "deploy", "--rpc", fresh_anvil.url).exit_code == 0
    for i, port in ((1, free_port()), (2, free_port())):
        assert run("token", "faucet", dev_account(i).address).exit_code == 0
        r = run("provider", "register", "--price", str(10 + i), "--stake", "5", "--port", str(port), "--account", f"dev:{i}")
        assert r.exit_code == 0, r.output
    r = run("provider", "status")
    assert r.exit_code == 1 and "pass --account" in r.output
    for i in (1, 2):
        st = json.loads(run("provider", "status", "--json", "--account", f"dev:{i}").output)
        assert st["address"] == dev_account(i).address and st["price"] == 10 + i and st["stake"] == 5_000_000
    # A dev account may also be named by its address on the local chain.
    r = run("provider", "unstake", "1", "--account", dev_account(2).address)
    assert r.exit_code == 0 and "thawing" in r.output, r.output


# ------------------------------------------------------------------------------ issue 13: two machines, rough edges

def _json(r):
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _deploy(url: str) -> dict:
    return _json(run("contracts", "deploy", "--rpc", url, "--json"))


def _home(mesh_home, name: str, monkeypatch) -> None:
    """Switch this test to another user directory (another machine's)."""
    monkeypatch.setenv("MESH_HOME", str(mesh_home.parent / name))


def test_chain_up_host_block_time_and_json(mesh_home):
    port = free_port()
    env = {**os.environ, "MESH_HOME": str(mesh_home)}
    up = subprocess.run([sys.executable, "-m", "meshmarket.cli", "chain", "up", "--host", "0.0.0.0", "--port", str(port),
                         "--block-time", "1", "--detach", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    try:
        state = json.loads(up.stdout)
        assert state["url"] == f"http://127.0.0.1:{port}" and state["host"] == "0.0.0.0" and state["block_time"] == 1
        assert all(u.endswith(f":{port}") and "127.0.0.1" not in u for u in state["urls"])
        # A second chain from the same directory is refused (the record would be lost).
        r = run("chain", "up", "--port", str(free_port()))
        assert r.exit_code == 1 and "already runs" in r.output
        # --block-time: blocks come without transactions (polled: the machine may be slow).
        first = _json(run("chain", "status", "--json"))["block"]
        deadline = time.monotonic() + 60
        while _json(run("chain", "status", "--json"))["block"] == first:
            assert time.monotonic() < deadline, "no block was mined with --block-time 1"
            time.sleep(0.5)
    finally:
        down = run("chain", "down", "--json")
    assert _json(down)["stopped"] is True
    r = run("chain", "up", "--host", "localhost")
    assert r.exit_code == 2 and "not an IPv4 address" in r.output


def test_contracts_deploy_finds_the_chain_chain_up_runs(mesh_home):
    """README: `mesh chain up --port N` then `mesh contracts deploy` (no --rpc) deploys there."""
    port = free_port()
    env = {**os.environ, "MESH_HOME": str(mesh_home)}
    up = subprocess.run([sys.executable, "-m", "meshmarket.cli", "chain", "up", "--port", str(port), "--detach"],
                        env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    try:
        dep = _deploy_no_rpc()
        assert dep["rpc_url"] == f"http://127.0.0.1:{port}"
        assert _json(run("market", "show", "--json"))["reachable"] is True
    finally:
        run("chain", "down")


def _deploy_no_rpc() -> dict:
    return _json(run("contracts", "deploy", "--json"))


def test_market_join_finds_checks_and_records(fresh_anvil, mesh_home, monkeypatch):
    url = fresh_anvil.url
    r = run("market", "join", url)
    assert r.exit_code == 1 and "no market has been deployed" in r.output and "mesh contracts deploy" in r.output
    dep = _deploy(url)
    _home(mesh_home, "second-machine", monkeypatch)  # another machine: its own user directory
    r = run("token", "balance")
    assert r.exit_code == 1 and "mesh market join" in r.output
    joined = _json(run("market", "join", url, "--json"))  # found by scanning the chain
    for key in ("chain_id", "token", "registry", "market", "block", "block_hash", "start_block", "deployer", "params"):
        assert joined[key] == dep[key], key
    assert _json(run("market", "show", "--json"))["market"] == dep["market"]
    assert _json(run("token", "balance", dev_account(1).address, "--json"))["balances"]  # every command finds it
    # Given addresses are checked: a token is not a market, the chain id must be the expected one.
    r = run("market", "join", url, "--market", dep["token"])
    assert r.exit_code == 1 and "not a market (JobMarket) of this Meshmarket version" in r.output
    r = run("market", "join", url, "--market", dev_account(1).address)
    assert r.exit_code == 1 and "no contract at" in r.output
    r = run("market", "join", url, "--market", dep["market"], "--chain-id", "1")
    assert r.exit_code == 1 and "not chain 1" in r.output
    assert _json(run("market", "join", url, "--market", dep["market"], "--json"))["block_hash"] == dep["block_hash"]
    # Two markets: scanning names both and asks which; a bounded scan says how far it looked.
    second = _deploy(url)
    r = run("market", "join", url)
    assert r.exit_code == 1 and dep["market"] in r.output and second["market"] in r.output and "--market" in r.output
    for _ in range(3):
        fresh_anvil_mine(url)
    r = run("market", "join", url, "--scan", "2")
    assert r.exit_code == 1 and "in the last 2 blocks" in r.output and "--market ADDRESS" in r.output
    assert "Traceback" not in r.output


def fresh_anvil_mine(url: str) -> None:
    from meshmarket.mesh.anvil import rpc_call

    rpc_call(url, "evm_mine")


def test_faucet_gives_new_accounts_eth_for_gas(fresh_anvil, mesh_home):
    _deploy(fresh_anvil.url)
    env = {"MESH_PASSWORD": "pw"}
    address = _json(run("account", "new", "--json", env=env))["address"]
    # Before the faucet a new account cannot pay for gas; the faucet's default targets include it.
    (row,) = [x for x in _json(run("token", "faucet", "--amount", "5", "--json"))["faucet"] if x["address"] == address]
    assert row["eth_wei"] == 10 * 10**18 and row["balance"] == 5_000_000
    r = run("token", "deposit", "2", "--account", address, "--json", env=env)
    assert _json(r)["credit"] == 2_000_000
    r = run("token", "faucet", address, "--amount", "0", "--eth", "0.5", "--json")
    assert _json(r)["faucet"][0]["eth_wei"] > 0  # above 0.5 ETH already: left alone
    r = run("token", "faucet", address, "--eth", "abc")
    assert r.exit_code == 2 and "not an amount of ETH" in r.output


def test_faucet_refuses_other_chains(mesh_home):
    with start_anvil(chain_id=1337) as node:
        env = {"MESH_PASSWORD": "pw"}
        run("account", "import", env=env, input=dev_account(0).key.hex() + "\n")  # dev keys: refused off 31337
        assert run("contracts", "deploy", "--rpc", node.url, "--account", dev_account(0).address, env=env).exit_code == 0
        r = run("token", "faucet")
        assert r.exit_code == 1 and "only runs on the local chain" in r.output and "chain 1337" in r.output


def test_json_on_every_account_token_and_provider_command(fresh_anvil, mesh_home):
    _deploy(fresh_anvil.url)
    env = {"MESH_PASSWORD": "pw"}
    new = _json(run("account", "new", "--json", env=env))
    imported = _json(run("account", "import", "--json", env=env, input=dev_account(9).key.hex() + "\n"))
    assert imported["address"] == dev_account(9).address and new["keystore"].endswith(".json")
    assert set(_json(run("account", "list", "--json"))["accounts"]) == {new["address"], dev_account(9).address}
    assert _json(run("token", "faucet", dev_account(1).address, "--json"))["faucet"][0]["minted"] == 1000 * 10**6
    acct = ("--account", "dev:1")
    assert _json(run("token", "approve", "7", *acct, "--json"))["allowance"] == 7_000_000
    assert _json(run("token", "deposit", "3", *acct, "--json"))["credit"] == 3_000_000
    assert _json(run("token", "withdraw-credit", *acct, "--json"))["withdrawn"] == 3_000_000
    reg = _json(run("provider", "register", "--price", "10", "--stake", "20", "--port", str(free_port()), *acct, "--json"))
    assert reg["price"] == 10 and reg["stake"] == 20_000_000 and reg["model_hash"].startswith("0x") and reg["model_id"]
    assert _json(run("provider", "unstake", "5", *acct, "--json"))["thawing"] == 5_000_000
    w = _json(run("provider", "withdraw", *acct, "--json"))
    assert w["earnings"] == 0 and w["stake"] == 0 and w["thawing"] == 5_000_000 and w["thaw_ready_at"]
    assert _json(run("provider", "deregister", *acct, "--json"))["deregistered"] is True


def test_provider_deregister_and_status_of_unregistered(fresh_anvil, mesh_home):
    _deploy(fresh_anvil.url)
    run("token", "faucet", dev_account(1).address)
    r = run("provider", "status", "--account", "dev:7")
    assert r.exit_code == 1 and "is not registered as a provider" in r.output and "0.000000 MESH" not in r.output
    assert _json(run("provider", "status", "--account", "dev:7", "--json"))["registered"] is False
    assert run("provider", "register", "--price", "10", "--stake", "8", "--port", str(free_port()),
               "--account", "dev:1").exit_code == 0
    st = _json(run("provider", "status", "--account", "dev:1", "--json"))
    assert st["registered"] is True and "consumers accept it" in st["manifest_check"]
    r = run("provider", "deregister", "--account", "dev:1")
    assert r.exit_code == 0 and "deregistered" in r.output and "mesh provider unstake 8000000u" in r.output
    r = run("provider", "status", "--account", "dev:1")  # deregistered, but its stake is still there
    assert r.exit_code == 0 and "not registered" in r.output and "8.000000 MESH" in r.output
    r = run("provider", "deregister", "--account", "dev:1")
    assert r.exit_code == 1 and "not registered" in r.output


def test_deregister_refused_while_stake_is_locked_by_a_contest(fresh_anvil, mesh_home):
    from eth_utils import keccak

    from meshmarket.mesh.chain import Chain
    from meshmarket.mesh.config import Deployment
    from meshmarket.mesh.market import MarketClient, ResultClaim

    _deploy(fresh_anvil.url)
    run("token", "faucet", *(dev_account(i).address for i in (1, 2, 3, 5)))
    for i in (1, 2, 3):
        assert run("provider", "register", "--price", "10", "--stake", "100", "--port", str(free_port()),
                   "--account", f"dev:{i}").exit_code == 0
    chain = Chain.open(Deployment.load())
    mc, consumer = MarketClient(chain), dev_account(5)
    model = bytes(mc.account(dev_account(1).address)["model_hash"])
    job_id, job, _ = mc.open_job(consumer, model, keccak(b"prompt"), 8, 10)
    job, _ = mc.draw_seats(consumer, job)
    by_address = {dev_account(i).address: dev_account(i) for i in (1, 2, 3)}
    outs = [keccak(b"A"), keccak(b"A"), keccak(b"B")]  # seat 2 disagrees: the job is contested
    results = [ResultClaim(job_id, outs[s], 4).sign(by_address[job.seats[s]], chain.chain_id, chain.market.address)
               for s in range(3)]
    assert mc.contest_of(mc.settle(consumer, job, results)) is not None
    locked = [a for a in by_address if mc.account(a)["locked"]]
    assert locked
    r = run("provider", "deregister", "--account", locked[0])
    assert r.exit_code == 1 and "locked by contested jobs" in r.output and "mesh provider status" in r.output
    assert mc.account(locked[0])["listed"]


def test_prices_parse_and_print_one_way(fresh_anvil, mesh_home):
    from meshmarket.mesh.types import format_price, parse_price

    assert parse_price("10") == parse_price("10u") == parse_price("0.00001/token") == 10
    assert parse_price(format_price(1234)) == 1234 and format_price(10) == "10 MESH/1M tokens"
    with pytest.raises(ValueError, match="whole number of base units"):
        parse_price("2.5")
    _deploy(fresh_anvil.url)
    run("token", "faucet", dev_account(1).address, dev_account(2).address)
    r = run("provider", "register", "--price", "0.000012/token", "--port", str(free_port()), "--account", "dev:1")
    assert r.exit_code == 0 and "12 MESH/1M tokens" in r.output, r.output
    assert _json(run("provider", "status", "--account", "dev:1", "--json"))["price"] == 12
    assert "12 MESH/1M tokens" in run("provider", "status", "--account", "dev:1").output
    r = run("provider", "register", "--price", "2.5", "--port", str(free_port()), "--account", "dev:2")
    assert r.exit_code == 2 and "whole number of base units per token" in r.output


def test_deposit_and_settle_run_without_account_flag(fresh_anvil, mesh_home, monkeypatch):
    """README: `mesh token deposit 10` and `mesh settle` with the one keystore account, or $MESH_ACCOUNT."""
    _deploy(fresh_anvil.url)
    monkeypatch.setenv("MESH_PASSWORD", "pw")
    run("account", "import", input=dev_account(6).key.hex() + "\n")
    run("token", "faucet", dev_account(6).address)
    r = run("token", "deposit", "10")
    assert r.exit_code == 0 and dev_account(6).address in r.output and "credit 10.000000 MESH" in r.output, r.output
    r = run("settle")
    assert r.exit_code == 0 and "nothing pending" in r.output, r.output
    run("account", "new")  # two accounts: say which are there instead of guessing
    r = run("token", "credit")
    assert r.exit_code == 2 and "2 keystore accounts" in r.output and "MESH_ACCOUNT" in r.output
    monkeypatch.setenv("MESH_ACCOUNT", dev_account(6).address)
    assert _json(run("token", "credit", "--json"))["credit"] == 10_000_000


def _start_provider(home, index: int, url: str):
    """`mesh provider start` as its own process; returns it once it says ready."""
    env = {**os.environ, "MESH_HOME": str(home), "MESH_RPC_URL": url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "meshmarket.cli", "provider", "start", "--account", f"dev:{index}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ready "):
            return proc
    proc.wait(10)
    raise AssertionError("provider did not start:\n" + "".join(lines))


def test_models_names_and_full_hash_and_explains_rejected_manifests(fresh_anvil, mesh_home, monkeypatch):
    from meshmarket.cli.consumer import _model_hash
    from meshmarket.provider.engine import default_model_path
    from meshmarket.provider.modelfile import file_sha256

    _deploy(fresh_anvil.url)
    run("token", "faucet", dev_account(1).address)
    port = free_port()
    assert run("provider", "register", "--price", "10", "--port", str(port), "--account", "dev:1").exit_code == 0
    proc = _start_provider(mesh_home, 1, fresh_anvil.url)
    try:
        full = file_sha256(default_model_path())
        (model,) = _json(run("models", "--json"))["models"]
        assert model["model_hash"] == full and len(full) == 66 and _model_hash(full) == bytes.fromhex(full[2:])
        assert model["name"] and model["offers"][0]["manifest"] == "ok"
        text = run("models").output
        assert model["name"] in text and f"--model {full}" in text and "10 MESH/1M tokens" in text
        assert "reachable, manifest accepted" in run("provider", "check", "--account", "dev:1").output
        # Registered again from another directory (another price, same endpoint): the running node
        # now serves a manifest that is not the registered one. Consumers, and the provider, are told.
        home = mesh_home.parent / "elsewhere"
        home.mkdir()
        (home / "deployment.json").write_text((mesh_home / "deployment.json").read_text())
        monkeypatch.setenv("MESH_HOME", str(home))
        assert run("provider", "register", "--price", "11", "--port", str(port), "--account", "dev:1").exit_code == 0
        monkeypatch.setenv("MESH_HOME", str(mesh_home))
        (offer,) = _json(run("models", "--json"))["offers"]
        assert offer["manifest"] == "rejected" and "not the one it registered" in offer["manifest_problem"]
        assert "rejected" in run("models").output
        r = run("provider", "check", "--account", "dev:1")
        assert r.exit_code == 1 and "consumers reject the manifest" in r.output and "mesh provider register" in r.output
        assert "NOT this directory's manifest" in run("provider", "status", "--account", "dev:1").output
    finally:
        proc.terminate()
        proc.wait(30)


def _readme_commands(section: str) -> list[list[str]]:
    """The commands of a README section's bash blocks, as argument lists (comments dropped)."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    part = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    return [args for block in re.findall(r"```bash\n(.*?)```", part, re.S)
            for line in block.splitlines() if (args := shlex.split(line, comments=True))]


def test_readme_quick_start_runs_as_written(mesh_home):
    """Every line of the README's quick start, in order, as written; only the ports are free ones
    instead of 8545 and 4001-4003 (a test never takes a fixed port)."""
    commands = _readme_commands("Quick start")
    assert commands[0] == ["source", ".venv/bin/activate"] and ["mesh", "contracts", "deploy"] in commands
    env = {**os.environ, "MESH_HOME": str(mesh_home), "PYTHONUNBUFFERED": "1"}
    ports: dict[str, str] = {}
    background: list[subprocess.Popen] = []
    outputs = {}
    try:
        for args in commands[1:]:
            if args[0] == "export":
                key, _, value = args[1].partition("=")
                env[key] = value
                continue
            detach = args[-1] == "&"
            args = [a for a in args if a != "&"]
            assert args[0] == "mesh", args
            args = [ports.setdefault(a, str(free_port())) if i and args[i - 1] == "--port" else a
                    for i, a in enumerate(args)]
            if args[1:3] == ["chain", "up"]:
                args += ["--port", str(free_port())]
            argv = [sys.executable, "-m", "meshmarket.cli", *args[1:]]
            if detach:  # started at once; ready is awaited before the next command in the foreground
                background.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   text=True, stdin=subprocess.DEVNULL))
                continue
            for proc in background:
                _ready(proc)
            r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
            assert r.returncode == 0 and "Traceback" not in r.stderr, f"{' '.join(args)}:\n{r.stdout}\n{r.stderr}"
            outputs[" ".join(args[1:3])] = r.stdout
        assert "agreement 3/3" in outputs["ask Why is the sky blue?"]
        assert "credit 10." in outputs["token deposit"]  # plus the query's refund
    finally:
        for proc in background:
            proc.terminate()
        for proc in background:
            proc.wait(30)
        subprocess.run([sys.executable, "-m", "meshmarket.cli", "chain", "down"], env=env, capture_output=True, timeout=60)


def _ready(proc: subprocess.Popen) -> None:
    """Wait until a started `mesh provider start` says ready (once), then keep its pipe drained."""
    if getattr(proc, "ready", False):
        return
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ready "):
            proc.ready = True
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return
    proc.wait(10)
    raise AssertionError(f"{' '.join(proc.args)} did not start:\n" + "".join(lines))
