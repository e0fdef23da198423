"""`mesh devnet up|status|down`: the demo's local market (Anvil, the contracts, funded dev accounts,
provider processes, some of them cheaters) that stays up until stopped.

`mesh demo` is the one-shot tour; this is the market to develop against: `mesh ask`, `mesh serve`
and every other command find it through the deployment record it writes in the user directory.
The market itself is started by the launcher the demo uses (cli/devnet.py); this module is the
command: its options, its record, running in the background, and stopping.

    $MESH_HOME/deployment.json        the devnet's contracts (an earlier record is kept aside as
                                      deployment.json.before-devnet and put back by `down`)
    $MESH_HOME/devnet.json            the devnet: RPC URL, contracts, providers, processes
    $MESH_HOME/devnet/                each provider's own user directory, and its output in
                                      provider-N.log
    $MESH_HOME/devnet.log             what a detached devnet prints

Providers are dev:1..dev:N (the last K cheat: they sign altered answers that only a jury can
catch); dev:9 is a consumer, funded with 10,000 MESH and an allowance for the registry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from meshmarket.cli.common import echo_json, json_option, table
from meshmarket.mesh import config
from meshmarket.mesh.errors import ConfigError
from meshmarket.mesh.files import write_json

MESH = 10**6
CONSUMER = 9
MAX_PROVIDERS = 8
START_TIMEOUT = 600.0


def _paths() -> dict[str, Path]:
    home = config.home()
    return {"record": home / "devnet.json", "root": home / "devnet", "log": home / "devnet.log",
            "deployment": home / "deployment.json", "saved": home / "deployment.json.before-devnet"}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _load_record() -> dict | None:
    path = _paths()["record"]
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


@click.group()
def devnet() -> None:
    """A local market that stays up: chain, contracts, provider processes (some cheating)."""


@devnet.command()
@click.option("--providers", "count", type=click.IntRange(3, MAX_PROVIDERS), default=6, show_default=True,
              help="Provider processes (dev:1..dev:N): a query seats three, a dispute's jury three more.")
@click.option("--cheaters", type=click.IntRange(0, MAX_PROVIDERS), default=1, show_default=True,
              help="How many of them sign altered answers (the last ones).")
@click.option("--price", type=click.IntRange(1, 10**6), default=10, show_default=True,
              help="Each provider's price, base units per output token.")
@click.option("--block-time", type=click.IntRange(0, 60), default=0, show_default=True,
              help="Seconds between blocks once started (0: a block per transaction, as Anvil does).")
@click.option("--detach", is_flag=True, help="Run in the background; stop it with `mesh devnet down`.")
@json_option
def up(count: int, cheaters: int, price: int, block_time: int, detach: bool, as_json: bool) -> None:
    """Start the local market; print its RPC URL, contracts and providers."""
    if cheaters >= count - 1:
        raise click.BadParameter("leave at least two honest providers", param_hint="--cheaters")
    record = _load_record()
    if record is not None and _alive(record.get("pid")):
        raise ConfigError(f"a devnet is already running (pid {record['pid']}, {record['rpc_url']})",
                          "use it, or stop it first with `mesh devnet down`")
    args = ["--providers", str(count), "--cheaters", str(cheaters), "--price", str(price),
            "--block-time", str(block_time)]
    if detach:
        record = _spawn(args)
    else:
        record = None
    if record is not None:
        _print(record, as_json)
        return
    _run(count, cheaters, price, block_time, as_json)


def _spawn(args: list[str]) -> dict:
    """Start the devnet in its own session (it outlives this command) and wait for its record."""
    paths = _paths()
    paths["record"].unlink(missing_ok=True)
    with open(paths["log"], "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "meshmarket.cli.localnet", "up", *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    click.echo(f"starting the devnet in the background (pid {proc.pid}, log {paths['log']})…", err=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        record = _load_record()
        if record is not None and record.get("pid") == proc.pid:
            return record
        if proc.poll() is not None:
            tail = paths["log"].read_text(errors="replace").splitlines()[-15:]
            raise ConfigError("the devnet did not start:\n" + "\n".join(tail), f"see {paths['log']}")
        time.sleep(0.2)
    proc.terminate()
    raise ConfigError(f"the devnet did not start within {START_TIMEOUT:.0f} s", f"see {paths['log']}")


def _run(count: int, cheaters: int, price: int, block_time: int, as_json: bool) -> None:
    """Run the devnet in this process until SIGINT or SIGTERM, then stop everything."""
    from meshmarket.cli.devnet import start_meshnet

    paths = _paths()
    paths["root"].mkdir(parents=True, exist_ok=True)
    prices = {i: price for i in range(1, count + 1)}
    cheating = tuple(range(count - cheaters + 1, count + 1)) if cheaters else ()
    signal.signal(signal.SIGTERM, _stop_signal)
    click.echo(f"starting a chain, the contracts and {count} providers ({cheaters} cheating)…", err=True)
    logs = {i: open(paths["root"] / f"provider-{i}.log", "a", buffering=1) for i in prices}
    net = start_meshnet(paths["root"], prices, cheaters=cheating, extra=("--claim-poll", "0.5"),
                        on_line=lambda i, line: logs[i].write(line + "\n"))
    try:
        record = _setup(net, prices, cheating, block_time)
        _print(record, as_json)
        click.echo("the devnet runs until Ctrl-C or `mesh devnet down`", err=True)
        while True:
            time.sleep(1)
    except (KeyboardInterrupt, _Stop):
        click.echo("stopping the devnet…", err=True)
    finally:
        net.close()
        _forget(os.getpid())
        for log in logs.values():
            log.close()


class _Stop(Exception):
    pass


def _stop_signal(signum, frame) -> None:
    raise _Stop()


def _setup(net, prices: dict[int, int], cheating: tuple[int, ...], block_time: int) -> dict:
    """Fund the consumer, record the deployment where every command looks, write the record."""
    from meshmarket.mesh.keys import dev_account

    paths = _paths()
    consumer = dev_account(CONSUMER)
    net.fund(CONSUMER, 10_000 * MESH)
    net.chain.ensure_allowance(consumer, net.deployment.registry, 10**15)
    if block_time:
        net.chain.w3.provider.make_request("evm_setIntervalMining", [block_time])
    if paths["deployment"].exists() and not paths["saved"].exists():
        paths["deployment"].replace(paths["saved"])
    net.deployment.save(paths["deployment"])
    d = net.deployment
    record = {
        "pid": os.getpid(), "rpc_url": net.url, "chain_id": d.chain_id, "block_time": block_time,
        "anvil_pid": net.anvil.proc.pid, "model_hash": "0x" + net.model_hash.hex(),
        "contracts": {"token": d.token, "registry": d.registry, "market": d.market},
        "consumer": {"account": f"dev:{CONSUMER}", "address": consumer.address},
        "providers": [{"account": f"dev:{i}", "address": p.address, "price": prices[i], "cheater": i in cheating,
                       "pid": p.proc.pid if p.proc else None, "peer_id": p.peer_id, "addrs": p.addrs,
                       "home": str(p.home), "log": str(paths["root"] / f"provider-{i}.log")}
                      for i, p in sorted(net.providers.items())],
        "started_at": int(time.time()),
    }
    write_json(paths["record"], record)
    return record


def _forget(pid: int) -> None:
    """Remove the record (if it is this devnet's) and put back the deployment it replaced."""
    paths = _paths()
    record = _load_record()
    if record is not None and record.get("pid") != pid:
        return
    paths["record"].unlink(missing_ok=True)
    if paths["saved"].exists():
        paths["saved"].replace(paths["deployment"])
    elif record is not None:
        paths["deployment"].unlink(missing_ok=True)


def _print(record: dict, as_json: bool) -> None:
    if as_json:
        echo_json(record)
        return
    c = record["contracts"]
    click.echo(f"rpc        {record['rpc_url']} (chain {record['chain_id']}"
               + (f", a block every {record['block_time']} s)" if record.get("block_time") else ")"))
    click.echo(f"token      {c['token']}\nregistry   {c['registry']}\nmarket     {c['market']}")
    click.echo(f"model      {record['model_hash']}")
    rows = [[p["account"], p["address"], str(p["price"]), "cheater" if p["cheater"] else "honest",
             (p["addrs"] or ["?"])[0]] for p in record["providers"]]
    click.echo(table(rows, ["provider", "address", "price", "role", "listens on"]))
    click.echo(f"consumer   {record['consumer']['account']} {record['consumer']['address']} (10,000 MESH)")
    click.echo(f"recorded in {_paths()['deployment']}: try `mesh ask 'Name a planet.' --account "
               f"{record['consumer']['account']}` or `mesh serve --account {record['consumer']['account']}`")


@devnet.command()
@json_option
def status(as_json: bool) -> None:
    """Whether the devnet runs: its chain, and each provider's process and stake."""
    record = _load_record()
    if record is None:
        raise ConfigError("no devnet is running", "start one with `mesh devnet up --detach`")
    from meshmarket.mesh.anvil import rpc_call

    try:
        block = int(rpc_call(record["rpc_url"], "eth_blockNumber"), 16)
    except OSError:
        block = None
    stakes = _stakes(record) if block is not None else {}
    info = {"running": _alive(record["pid"]), "rpc_url": record["rpc_url"], "block": block,
            "providers": [{**p, "alive": _alive(p["pid"]), **stakes.get(p["address"], {})}
                          for p in record["providers"]]}
    if as_json:
        echo_json(info)
        return
    click.echo(f"devnet pid {record['pid']} {'running' if info['running'] else 'NOT running'}; "
               f"chain {record['rpc_url']} " + (f"at block {block}" if block is not None else "does not answer"))
    rows = [[p["account"], p["address"], str(p["price"]), "cheater" if p["cheater"] else "honest",
             "up" if p["alive"] else "DOWN", _mesh(p.get("stake")), _mesh(p.get("locked"))]
            for p in info["providers"]]
    click.echo(table(rows, ["provider", "address", "price", "role", "process", "stake", "locked"]))


def _mesh(amount: int | None) -> str:
    from meshmarket.mesh.types import format_amount

    return "?" if amount is None else format_amount(amount)


def _stakes(record: dict) -> dict[str, dict]:
    from meshmarket.mesh.chain import Chain
    from meshmarket.mesh.config import Deployment
    from meshmarket.mesh.market import MarketClient

    try:
        mc = MarketClient(Chain.open(Deployment.load(_paths()["deployment"]), record["rpc_url"]))
        out = {}
        for p in record["providers"]:
            a = mc.account(p["address"])
            out[p["address"]] = {"stake": a["stake"], "locked": a["locked"], "listed": a["listed"]}
        return out
    except Exception:  # noqa: BLE001 - status reports what it can
        return {}


@devnet.command()
def down() -> None:
    """Stop the devnet (providers, chain) and put back the deployment record it replaced."""
    record = _load_record()
    if record is None:
        raise ConfigError("no devnet is running", "nothing to stop")
    pid = record["pid"]
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    leftovers = [p["pid"] for p in record["providers"]] + [record.get("anvil_pid")]
    for other in leftovers:  # only if the devnet's own process could not stop them
        if _alive(other):
            os.kill(other, signal.SIGKILL)
    _forget(pid)
    click.echo(f"stopped the devnet at {record['rpc_url']}")


if __name__ == "__main__":
    devnet()
