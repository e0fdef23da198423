"""`mesh contracts deploy|show`: deploy the token, registry and market; show the deployment."""

from __future__ import annotations

import click

from mesh import config
from contracts.deploy import deploy as deploy_all
from mesh.chain import connect
from cli.common import account_option, echo_json, json_option, resolve_account, rpc_option
from mesh.config import Deployment, MarketParams
from mesh.types import format_amount


@click.group()
def contracts() -> None:
    """Deploy and inspect the market's contracts."""


def describe(dep: Deployment) -> str:
    p = dep.params
    return "\n".join([
        f"chain id      {dep.chain_id}  ({dep.rpc_url})",
        f"token         {dep.token}  (MESH, 6 decimals)",
        f"registry      {dep.registry}  (stake, escrow and earnings vault)",
        f"market        {dep.market}",
        f"block         {dep.block}",
        f"min job lock  {format_amount(p.min_job_lock)}, collateral x{p.collateral_ratio}, thaw {p.thaw_period} s",
        f"windows       delivery {p.delivery_window} s, settle {p.settle_window} s, "
        f"commit {p.commit_window} s, reveal {p.reveal_window} s",
    ])


@contracts.command()
@rpc_option
@account_option
@json_option
def deploy(rpc: str | None, account_name: str | None, as_json: bool) -> None:
    """Deploy MeshToken, ProviderRegistry and JobMarket and record where they are."""
    url = config.rpc_url(rpc)
    w3 = connect(url)
    chain_id = w3.eth.chain_id
    default = "dev:0" if chain_id == config.ANVIL_CHAIN_ID else None
    acct = resolve_account(account_name, chain_id, default)
    dep = deploy_all(w3, acct, url, MarketParams())
    path = dep.save()
    if as_json:
        echo_json({**dep.__dict__, "params": dep.params.__dict__, "path": str(path)})
    else:
        click.echo(describe(dep))
        click.echo(f"recorded in   {path}")


@contracts.command()
@json_option
def show(as_json: bool) -> None:
    """Print the recorded deployment."""
    dep = Deployment.load()
    if as_json:
        echo_json({**dep.__dict__, "params": dep.params.__dict__})
    else:
        click.echo(describe(dep))
