"""The `mesh` CLI against a real Anvil: deploy, faucet, accounts, and clear errors (no tracebacks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mesh.anvil import free_port, start_anvil
from cli.main import main
from mesh.keys import dev_account


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
    up = subprocess.run([sys.executable, "-m", "cli", "chain", "up", "--port", str(port), "--detach"],
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
