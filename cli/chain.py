"""`mesh chain up|down|status`: the local Anvil chain."""

from __future__ import annotations

import json
import os
import signal
import time

import click

from mesh import config
from mesh.anvil import rpc_call, start_anvil
from cli.common import json_option, rpc_option
from mesh.errors import ConfigError


def _state_path():
    return config.home() / "anvil.json"


@click.group()
def chain() -> None:
    """Run a local Anvil chain for development and demos."""


@chain.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8545, show_default=True, help="Port on 127.0.0.1.")
@click.option("--detach", is_flag=True, help="Run in the background; stop it with `mesh chain down`.")
def up(port: int, detach: bool) -> None:
    """Start Anvil, wait until it answers, print the RPC URL."""
    log = config.home() / "anvil.log"
    node = start_anvil(port, detach=detach, log_path=log)
    if detach:
        _state_path().write_text(json.dumps({"pid": node.proc.pid, "port": port, "url": node.url}))
        click.echo(node.url)
        return
    click.echo(node.url)
    click.echo("Anvil is running (chain id 31337); Ctrl-C stops it.", err=True)
    try:
        while node.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()


@chain.command()
def down() -> None:
    """Stop the Anvil started with `mesh chain up --detach`."""
    path = _state_path()
    if not path.exists():
        raise ConfigError("no detached chain is recorded", "start one with `mesh chain up --detach`")
    state = json.loads(path.read_text())
    try:
        os.kill(int(state["pid"]), signal.SIGTERM)
        click.echo(f"stopped Anvil (pid {state['pid']}) at {state['url']}")
    except ProcessLookupError:
        click.echo(f"Anvil (pid {state['pid']}) was not running")
    path.unlink()


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
