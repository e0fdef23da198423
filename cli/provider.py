"""`mesh provider register|start|status|earnings|unstake|withdraw`: earn tokens serving a model."""

from __future__ import annotations

import math
import sys

import click

from cli.common import account_option, echo_json, json_option, open_chain, resolve_account, rpc_option, table
from cli.token import _amount
from mesh.market import MAX_PRICE, MarketClient
from mesh.types import format_amount


@click.group()
def provider() -> None:
    """Serve a GGUF model on the mesh and earn MESH for every verified answer."""


def _account(account_name, chain):
    """--account, else the one provider registered from this user directory."""
    from provider.runtime import ProviderSettings

    return resolve_account(account_name or ProviderSettings.load().account, chain.chain_id)


@provider.command()
@click.option("--model", default="default", show_default=True, help="GGUF file path, or 'default' (SmolLM2-135M Q4_1).")
@click.option("--price", type=click.IntRange(1, MAX_PRICE), required=True, help="Base units per output token.")
@click.option("--stake", default="0", callback=_amount, help="MESH to stake now (e.g. 100 or 100000000u).")
@click.option("--host", default="127.0.0.1", show_default=True, help="IP to listen on.")
@click.option("--announce", default=None, metavar="IP",
              help="IP peers dial, when it is not --host (e.g. --host 0.0.0.0 --announce 203.0.113.7).")
@click.option("--port", type=click.IntRange(1, 65535), default=4001, show_default=True, help="TCP port to listen on.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True, help="CPU threads for llama.cpp.")
@click.option("--gpu-layers", type=click.IntRange(0, 10_000), default=0, show_default=True, help="Layers offloaded to a GPU.")
@click.option("--ctx", type=click.IntRange(16, 1 << 20), default=2048, show_default=True,
              help="Context window the engine runs with, in tokens (capped by the model's).")
@click.option("--group", default=None, metavar="NAME",
              help="Join the private mesh NAME (its consumers ask with --group NAME) instead of the open market.")
@account_option
@rpc_option
def register(model, price, stake, host, announce, port, threads, gpu_layers, ctx, group, account_name, rpc) -> None:
    """Register (or re-register) this node's model, price and endpoint on-chain, and stake."""
    from provider.runtime import endpoint_of, register_provider
    from mesh.protocol import Manifest

    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    settings = register_provider(chain, acct, model, price, stake, host=host, port=port, threads=threads,
                                 gpu_layers=gpu_layers, ctx=ctx, group=group, announce=announce)
    m = Manifest.parse(settings.manifest)
    click.echo(f"registered {acct.address}")
    click.echo(f"  model     {m.model_id} ({m.quantization}, ctx {m.context_length}) sha256 {m.model_sha256}")
    click.echo(f"  pool      {'private mesh ' + repr(group) if group else 'the open market'}")
    click.echo(f"  build     {m.build.fingerprint if m.build else '?'}")
    click.echo(f"  price     {price} base units per output token")
    click.echo(f"  endpoint  {endpoint_of(m)}")
    click.echo(f"  stake     +{format_amount(stake)}")
    click.echo("start serving with `mesh provider start`")


@provider.command()
@click.option("--claim-poll", type=click.FloatRange(0.1, 3600), default=15.0, show_default=True,
              help="Seconds between checks of served jobs the consumer has not settled.")
@account_option
@rpc_option
def start(claim_poll: float, account_name, rpc) -> None:
    """Run the node: serve paid jobs, log each one with tokens and pay. Ctrl-C stops it."""
    serve(account_name, rpc, claim_poll)


def serve(account_name: str | None, rpc: str | None, claim_poll: float, wrap_engine=None) -> None:
    """`mesh provider start`; the devnet's demo cheater runs through here too, with `wrap_engine`
    altering what the real engine says (cli/devnet.py)."""
    import logging

    from provider.engine import LlamaCppEngine
    from provider.runtime import ProviderSettings, run_provider

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    chain = open_chain(rpc)
    settings = ProviderSettings.load(_address(account_name) if account_name else None)
    acct = resolve_account(account_name or settings.account, chain.chain_id)
    engine = None
    if wrap_engine is not None:
        engine = wrap_engine(LlamaCppEngine(settings.model_path, n_ctx=settings.ctx, n_threads=settings.threads,
                                            n_gpu_layers=settings.gpu_layers), acct.address)

    def ready(peer_id: str, addrs: list[str]) -> None:
        click.echo(f"ready {peer_id} {' '.join(addrs)}")
        sys.stdout.flush()

    def on_job(entry) -> None:
        ft = "-" if math.isnan(entry.first_token_ms) else f"{entry.first_token_ms:.0f} ms"
        click.echo(f"job 0x{entry.job_id.hex()[:12]}… from {entry.consumer[:10]}…: {entry.outcome}, "
                   f"{entry.tokens} tokens x {entry.price} = {entry.pay} base units (if agreed), first token {ft}")
        sys.stdout.flush()

    def on_claim(msg: str) -> None:
        click.echo(msg)
        sys.stdout.flush()

    run_provider(chain, acct, settings, on_ready=ready, on_job=on_job, on_claim=on_claim, claim_poll=claim_poll,
                 engine=engine)


@provider.command()
@account_option
@rpc_option
@json_option
def status(account_name, rpc, as_json) -> None:
    """Stake, locked stake, earnings, price and listing of this provider on-chain."""
    chain = open_chain(rpc)
    address = _address(account_name)
    a = MarketClient(chain).account(address)
    if as_json:
        echo_json({"address": address, **a})
        return
    rows = [["stake", format_amount(a["stake"])], ["locked by open jobs", format_amount(a["locked"])],
            ["free", format_amount(a["stake"] - a["locked"])], ["earnings to withdraw", format_amount(a["owed"])],
            ["thawing", format_amount(a["thawing"]) + (f" (ready at {a['thaw_ready_at']})" if a["thawing"] else "")],
            ["price per token", f"{a['price']} base units"], ["model", "0x" + bytes(a["model_hash"]).hex()],
            ["manifest", "0x" + bytes(a["manifest_hash"]).hex()]]
    click.echo(f"provider {address}")
    click.echo(table(rows, ["", "value"]))


@provider.command()
@account_option
@rpc_option
@json_option
def earnings(account_name, rpc, as_json) -> None:
    """Earnings waiting to be withdrawn, and the token balance."""
    chain = open_chain(rpc)
    address = _address(account_name)
    a = MarketClient(chain).account(address)
    bal = chain.balance(address)
    if as_json:
        echo_json({"address": address, "owed": a["owed"], "balance": bal})
    else:
        click.echo(f"{address}: {format_amount(a['owed'])} to withdraw (`mesh provider withdraw`), balance {format_amount(bal)}")


@provider.command()
@click.argument("amount", callback=_amount)
@account_option
@rpc_option
def unstake(amount, account_name, rpc) -> None:
    """Start thawing AMOUNT of free stake; withdraw it after the thaw period."""
    chain = open_chain(rpc)
    acct = _account(account_name, chain)
    mc = MarketClient(chain)
    mc.request_unstake(acct, amount)
    a = mc.account(acct.address)
    click.echo(f"{format_amount(a['thawing'])} thawing, withdrawable from unix time {a['thaw_ready_at']}")


@provider.command()
@account_option
@rpc_option
def withdraw(account_name, rpc) -> None:
    """Withdraw earnings, and thawed stake whose thaw period is over."""
    chain = open_chain(rpc)
    acct = _account(account_name, chain)
    mc = MarketClient(chain)
    a = mc.account(acct.address)
    now = chain.latest_time()
    done = []
    if a["owed"]:
        mc.withdraw_earnings(acct)
        done.append(f"earnings {format_amount(a['owed'])}")
    if a["thawing"] and now >= a["thaw_ready_at"]:
        mc.withdraw_stake(acct)
        done.append(f"stake {format_amount(a['thawing'])}")
    if not done:
        msg = "nothing to withdraw"
        if a["thawing"]:
            msg += f" yet: {format_amount(a['thawing'])} thawing until unix time {a['thaw_ready_at']}"
        click.echo(msg)
        return
    msg = "withdrew " + " and ".join(done) + f"; balance {format_amount(chain.balance(acct.address))}"
    if a["thawing"] and now < a["thaw_ready_at"]:
        msg += f"; {format_amount(a['thawing'])} still thawing until unix time {a['thaw_ready_at']}"
    click.echo(msg)


def _address(account_name) -> str:
    from eth_utils import is_address, to_checksum_address

    from mesh import keys
    from provider.runtime import ProviderSettings

    name = account_name or ProviderSettings.load().account
    if name.startswith("dev:"):
        return keys.load_account(name, None).address
    if not is_address(name):
        raise click.BadParameter(f"{name!r} is not an address", param_hint="--account")
    return to_checksum_address(name)
