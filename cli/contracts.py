"""`mesh contracts deploy|show`: deploy a new market (token, registry and market); show the recorded one."""

from __future__ import annotations

import click

from meshmarket.cli.common import account_option, echo_json, json_option, resolve_account, rpc_option
from meshmarket.cli.market import deployment_json, describe
from meshmarket.contracts.deploy import deploy as deploy_all
from meshmarket.mesh import config
from meshmarket.mesh.chain import connect
from meshmarket.mesh.config import Deployment, MarketParams


@click.group()
def contracts() -> None:
    """Deploy a new market's contracts (to use an existing market, `mesh market join` it)."""


@contracts.command()
@rpc_option
@account_option
@json_option
def deploy(rpc: str | None, account_name: str | None, as_json: bool) -> None:
    """Deploy MeshToken, ProviderRegistry and JobMarket and record where they are.

    The chain is --rpc, else $MESH_RPC_URL, else the chain `mesh chain up` runs from this user
    directory, else the recorded market's chain."""
    url = config.rpc_url(rpc, new_deployment=True)
    w3 = connect(url)
    chain_id = w3.eth.chain_id
    default = "dev:0" if chain_id == config.ANVIL_CHAIN_ID else None
    acct = resolve_account(account_name, chain_id, default)
    dep = deploy_all(w3, acct, url, MarketParams())
    path = dep.save()
    if as_json:
        echo_json({**deployment_json(dep), "path": str(path)})
    else:
        click.echo(describe(dep))
        click.echo(f"recorded in   {path}")
        click.echo("other machines join it with `mesh market join RPC_URL` (their RPC URL for this chain)", err=True)


@contracts.command()
@json_option
def show(as_json: bool) -> None:
    """Print the recorded deployment (as `mesh market show`)."""
    dep = Deployment.load()
    if as_json:
        echo_json(deployment_json(dep))
    else:
        click.echo(describe(dep))
