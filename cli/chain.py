"""`mesh chain up|down|status`: the local Anvil chain (other machines join it with `mesh market join`)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import time

import click

from meshmarket.cli.common import echo_json, json_option, rpc_option
from meshmarket.mesh import config
from meshmarket.mesh.anvil import rpc_call, start_anvil
from meshmarket.mesh.files import write_json
from meshmarket.mesh.errors import ConfigError


def _state_path():
    return config.home() / config.LOCAL_CHAIN_FILE


def _host(ctx, param, value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IPv4 address (e.g. 127.0.0.1, 0.0.0.0 or 10.0.0.5)") from None
    return value


def reachable_urls(host: str, port: int) -> list[str]:
    """The URLs other machines may use: the host itself, or every non-loopback IPv4 address of this
    machine when Anvil listens on all of them."""
    if not ipaddress.IPv4Address(host).is_unspecified:
        return [] if ipaddress.IPv4Address(host).is_loopback else [f"http://{host}:{port}"]
    import psutil

    ips = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
           if a.family.name == "AF_INET" and not ipaddress.IPv4Address(a.address).is_loopback]
    return [f"http://{ip}:{port}" for ip in sorted(ips)]


@click.group()
def chain() -> None:
    """Run a local Anvil chain for development, demos and a market shared by several machines."""


@chain.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8545, show_default=True, help="TCP port.")
@click.option("--host", default="127.0.0.1", show_default=True, callback=_host, metavar="IP",
              help="IP to listen on: 0.0.0.0 (every interface) or this machine's address lets other machines join.")
@click.option("--block-time", type=click.FloatRange(0.1, 3600), default=None, metavar="SECONDS",
              help="Mine a block every SECONDS (default: one block per transaction, so the clock stands still "
                   "on a quiet chain).")
@click.option("--detach", is_flag=True, help="Run in the background; stop it with `mesh chain down`.")
@json_option
def up(port: int, host: str, block_time: float | None, detach: bool, as_json: bool) -> None:
    """Start Anvil, wait until it answers, print the RPC URL."""
    running = config.local_chain()
    if running:
        raise ConfigError(f"a chain started from this user directory already runs at {running['url']} "
                          f"(pid {running['pid']})", "use it, or stop it first with `mesh chain down`")
    node = start_anvil(port, detach=detach, log_path=config.home() / "anvil.log", host=host, block_time=block_time)
    state = {"pid": node.proc.pid, "port": port, "host": host, "url": node.url, "chain_id": config.ANVIL_CHAIN_ID,
             "block_time": block_time, "urls": reachable_urls(host, port), "detached": detach}
    write_json(_state_path(), state)
    if as_json:
        echo_json(state)
    else:
        click.echo(node.url)
        for url in state["urls"]:
            click.echo(f"other machines: mesh market join {url}", err=True)
        if state["urls"]:
            click.echo("(its dev accounts' keys are public: anyone who reaches this port can spend their ETH)", err=True)
    if detach:
        return
    if not as_json:
        click.echo(f"Anvil is running (chain id {config.ANVIL_CHAIN_ID}); Ctrl-C stops it.", err=True)
    try:
        while node.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
        _state_path().unlink(missing_ok=True)


@chain.command()
@json_option
def down(as_json: bool) -> None:
    """Stop the Anvil started with `mesh chain up` from this user directory."""
    path = _state_path()
    if not path.exists():
        raise ConfigError("no chain started from this user directory is recorded", "start one with `mesh chain up --detach`")
    state = json.loads(path.read_text())
    try:
        os.kill(int(state["pid"]), signal.SIGTERM)
        stopped = True
    except ProcessLookupError:
        stopped = False
    path.unlink()
    if as_json:
        echo_json({"pid": state["pid"], "url": state["url"], "stopped": stopped})
    elif stopped:
        click.echo(f"stopped Anvil (pid {state['pid']}) at {state['url']}")
    else:
        click.echo(f"Anvil (pid {state['pid']}) was not running")


@chain.command()
@rpc_option
@json_option
def status(rpc: str | None, as_json: bool) -> None:
    """Chain id and latest block of the node."""
    url = config.rpc_url(rpc)
    try:
        info = {"rpc_url": url, "chain_id": int(rpc_call(url, "eth_chainId"), 16),
                "block": int(rpc_call(url, "eth_blockNumber"), 16)}
    except OSError as exc:
        raise ConfigError(f"no Ethereum node answers at {url}", "start one with `mesh chain up`") from exc
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"{url}: chain {info['chain_id']}, block {info['block']}")
