"""`mesh demo`: the main job on the embedded defaults, start to finish on a private local chain."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import click
from eth_utils import keccak

from mesh.anvil import start_anvil
from mesh.chain import Chain, connect, deploy
from mesh.commands.common import table
from mesh.commands.contracts import describe
from mesh.config import MarketParams
from mesh.keys import dev_account
from mesh.market import MarketClient
from mesh.types import format_amount

MESH = 10**6
PRICES = (8, 10, 10, 12)  # base units per output token, one per demo provider
STAKE = 100 * MESH


def _model_hash() -> tuple[str, bytes]:
    """The embedded model's file hash: what providers register on-chain."""
    from provider.engine import default_model_path
    from provider.manifest import model_info

    path = default_model_path()
    return Path(path).name, bytes.fromhex(model_info(path).sha256[2:])


@click.command()
@click.option("--keep-home", is_flag=True, help="Use $MESH_HOME instead of a throwaway directory.")
def demo(keep_home: bool) -> None:
    """Start a private chain, deploy the market, fund and register providers, show the market."""
    t0 = time.monotonic()
    home = None if keep_home else tempfile.TemporaryDirectory(prefix="mesh-demo-")
    if home:
        os.environ["MESH_HOME"] = home.name
    node = start_anvil()
    try:
        click.secho(f"== chain: Anvil at {node.url}", bold=True)
        w3 = connect(node.url)
        dep = deploy(w3, dev_account(0), node.url, MarketParams())
        dep.save()
        click.echo(describe(dep))
        chain = Chain(w3, dep)
        mc = MarketClient(chain)

        name, model_hash = _model_hash()
        click.secho(f"\n== providers register {name} (sha256 0x{model_hash.hex()[:16]}…) and stake", bold=True)
        providers = [dev_account(i) for i in (1, 2, 3, 4)]
        for p, price in zip(providers, PRICES):
            chain.transact(dev_account(0), chain.token.functions.mint(p.address, 1_000 * MESH))
            mc.register(p, model_hash, keccak(text=f"manifest of {p.address}"), price)
            mc.stake(p, STAKE)
        rows = []
        for p in providers:
            a = mc.account(p.address)
            rows.append([p.address, str(a["price"]), format_amount(a["stake"]), format_amount(a["stake"] - a["locked"])])
        click.echo(table(rows, ["provider", "price/token", "stake", "free stake"]))
        click.secho(f"\ndone in {time.monotonic() - t0:.1f} s", bold=True)
    finally:
        node.stop()
        if home:
            home.cleanup()
