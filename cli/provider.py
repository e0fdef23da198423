"""`mesh provider register|start|check|status|earnings|unstake|withdraw|deregister`: earn tokens serving a model."""

from __future__ import annotations

import math
import sys

import click

from meshmarket.cli.common import (account_option, amount_callback, echo_json, json_option, open_chain, price_callback,
                        resolve_account, rpc_option, table)
from meshmarket.mesh.errors import ConfigError
from meshmarket.mesh.market import MarketClient
from meshmarket.mesh.types import format_amount, format_price, format_when


@click.group()
def provider() -> None:
    """Serve a GGUF model on the mesh and earn MESH for every verified answer."""


def _account(account_name, chain):
    """--account, else $MESH_ACCOUNT, else the one provider registered from this user directory."""
    return resolve_account(_address(account_name), chain.chain_id)


@provider.command()
@click.option("--model", default="default", show_default=True, help="GGUF file path, or 'default' (SmolLM2-135M Q4_1).")
@click.option("--price", callback=price_callback, required=True, metavar="PRICE",
              help="Per output token, in MESH per 1M tokens (= base units per token): 10, 10u or 0.00001/token.")
@click.option("--stake", default="0", callback=amount_callback, help="MESH to stake now (e.g. 100 or 100000000u).")
@click.option("--host", default="127.0.0.1", show_default=True, help="IP to listen on (0.0.0.0: every interface).")
@click.option("--announce", default=None, metavar="IP",
              help="IP peers dial, when it is not --host (e.g. --host 0.0.0.0 --announce 203.0.113.7).")
@click.option("--port", type=click.IntRange(1, 65535), default=4001, show_default=True, help="TCP port to listen on.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True, help="CPU threads for llama.cpp.")
@click.option("--gpu-layers", type=click.IntRange(0, 10_000), default=0, show_default=True, help="Layers offloaded to a GPU.")
@click.option("--ctx", type=click.IntRange(16, 1 << 20), default=2048, show_default=True,
              help="Context window the engine runs with, in tokens (capped by the model's).")
@click.option("--slots", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Jobs generated at once (continuous batching), each with --ctx tokens of context.")
@click.option("--group", default=None, metavar="NAME",
              help="Join the private mesh NAME (its consumers ask with --group NAME) instead of the open market.")
@account_option
@rpc_option
@json_option
def register(model, price, stake, host, announce, port, threads, gpu_layers, ctx, slots, group, account_name, rpc,
             as_json) -> None:
    """Register (or re-register) this node's model, price and endpoint on-chain, and stake."""
    from meshmarket.provider.runtime import endpoint_of, register_provider
    from meshmarket.mesh.protocol import Manifest

    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    settings = register_provider(chain, acct, model, price, stake, host=host, port=port, threads=threads,
                                 gpu_layers=gpu_layers, ctx=ctx, group=group, announce=announce, slots=slots)
    m = Manifest.parse(settings.manifest)
    a = MarketClient(chain).account(acct.address)
    if as_json:
        echo_json({"address": acct.address, "model_id": m.model_id, "model_hash": m.model_sha256,
                   "quantization": m.quantization, "context_length": m.context_length, "slots": m.slots or 1, "group": group,
                   "build": m.build.fingerprint if m.build else None, "price": price, "endpoint": endpoint_of(m),
                   "listen": f"{host}:{port}", "staked": stake, "stake": a["stake"], "manifest_hash": m.manifest_hash()})
        return
    click.echo(f"registered {acct.address}")
    click.echo(f"  model     {m.model_id} ({m.quantization}, ctx {m.context_length}, {m.slots or 1} slot(s))")
    click.echo(f"            --model {m.model_sha256}")
    click.echo(f"  pool      {'private mesh ' + repr(group) if group else 'the open market'}")
    click.echo(f"  build     {m.build.fingerprint if m.build else '?'}")
    click.echo(f"  price     {format_price(price)} ({price} base units per output token)")
    click.echo(f"  endpoint  {endpoint_of(m)} (listening on {host}:{port})")
    click.echo(f"  stake     +{format_amount(stake)} -> {format_amount(a['stake'])}")
    click.echo("start serving with `mesh provider start`; `mesh provider check` then dials it as consumers do")


@provider.command()
@click.option("--slots", type=click.IntRange(1, 256), default=None,
              help="Serve fewer jobs at once than registered (default: the registered slots).")
@click.option("--claim-poll", type=click.FloatRange(0.1, 3600), default=15.0, show_default=True,
              help="Seconds between checks of served jobs the consumer has not settled.")
@account_option
@rpc_option
def start(slots, claim_poll: float, account_name, rpc) -> None:
    """Run the node: serve paid jobs, log each one with tokens and pay. Ctrl-C stops it."""
    serve(account_name, rpc, claim_poll, slots=slots)


def serve(account_name: str | None, rpc: str | None, claim_poll: float, wrap_engine=None,
          slots: int | None = None) -> None:
    """`mesh provider start`; the devnet's demo cheater runs through here too, with `wrap_engine`
    altering what the real engine says (cli/devnet.py)."""
    import logging

    from meshmarket.provider.engine import LlamaCppEngine
    from meshmarket.provider.runtime import ProviderSettings, engine_for, run_provider

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    chain = open_chain(rpc)
    settings = ProviderSettings.load(_address(account_name) if account_name else None)
    acct = resolve_account(account_name or settings.account, chain.chain_id)
    engine = engine_for(settings, slots) if slots is not None else None
    if wrap_engine is not None:
        engine = wrap_engine(LlamaCppEngine(settings.model_path, n_ctx=settings.ctx, n_threads=settings.threads,
                                            n_gpu_layers=settings.gpu_layers), acct.address)

    def ready(peer_id: str, addrs: list[str]) -> None:
        click.echo(f"ready {peer_id} {' '.join(addrs)}")
        sys.stdout.flush()

    def on_job(entry) -> None:
        ft = "-" if math.isnan(entry.first_token_ms) else f"{entry.first_token_ms:.0f} ms"
        click.echo(f"job 0x{entry.job_id.hex()[:12]}… from {entry.consumer[:10]}…: {entry.outcome}, "
                   f"{entry.tokens} tokens x {format_price(entry.price)} = {format_amount(entry.pay)} (if agreed), "
                   f"first token {ft}")
        sys.stdout.flush()

    def on_claim(msg: str) -> None:
        click.echo(msg)
        sys.stdout.flush()

    run_provider(chain, acct, settings, on_ready=ready, on_job=on_job, on_claim=on_claim, claim_poll=claim_poll,
                 engine=engine)


def _manifest_match(address: str, a: dict) -> str | None:
    """Whether this directory's saved manifest is the registered one: consumers reject the node's
    manifest otherwise (None: no settings for this provider here)."""
    from meshmarket.provider.runtime import ProviderSettings
    from meshmarket.mesh.protocol import Manifest

    try:
        settings = ProviderSettings.load(address)
    except ConfigError:
        return None
    if Manifest.parse(settings.manifest).manifest_hash() == "0x" + bytes(a["manifest_hash"]).hex():
        return "this directory's manifest (consumers accept it)"
    return ("NOT this directory's manifest: registered again elsewhere? consumers reject this node's manifest "
            "until you run `mesh provider register` here again")


@provider.command()
@account_option
@rpc_option
@json_option
def status(account_name, rpc, as_json) -> None:
    """Stake, locked stake, earnings, price and listing of this provider on-chain."""
    chain = open_chain(rpc)
    address = _address(account_name)
    a = MarketClient(chain).account(address)
    registered = a["listed"]
    match = _manifest_match(address, a) if registered else None
    if as_json:
        echo_json({"address": address, "registered": registered, "manifest_check": match, **a})
        return
    money = a["stake"] or a["owed"] or a["thawing"]
    if not registered and not money:
        raise ConfigError(f"{address} is not registered as a provider on this market (no stake, no earnings)",
                          "register it with `mesh provider register --account ...`")
    when = format_when(a["thaw_ready_at"], chain.pending_time()) if a["thawing"] else ""
    rows = [["stake", format_amount(a["stake"])], ["locked by contested jobs", format_amount(a["locked"])],
            ["free", format_amount(a["stake"] - a["locked"])], ["earnings to withdraw", format_amount(a["owed"])],
            ["thawing", format_amount(a["thawing"]) + (f", withdrawable {when}" if a["thawing"] else "")]]
    if registered:
        rows += [["price", format_price(a["price"])], ["model", "0x" + bytes(a["model_hash"]).hex()],
                 ["pool", "open market" if not any(bytes(a["group"])) else "private mesh 0x" + bytes(a["group"]).hex()],
                 ["manifest", "0x" + bytes(a["manifest_hash"]).hex()]]
        if match:
            rows.append(["", match])
    click.echo(f"provider {address}" + ("" if registered else ": not registered (deregistered); what it still holds:"))
    click.echo(table(rows, ["", "value"]))


@provider.command()
@account_option
@rpc_option
@json_option
def check(account_name, rpc, as_json) -> None:
    """Dial this provider's registered endpoint as a consumer does, and check its manifest the same way."""
    from meshmarket.cli.market import probe
    from meshmarket.consumer.discovery import discover

    chain = open_chain(rpc)
    address = _address(account_name)
    a = MarketClient(chain).account(address)
    if not a["listed"]:
        raise ConfigError(f"{address} is not registered as a provider on this market", "run `mesh provider register`")
    mh = bytes(a["model_hash"])
    offer = next((o for o in discover(chain, mh, bytes(a["group"])) if o.address == address), None)
    if offer is None:
        raise ConfigError(f"{address} registered no endpoint consumers can dial", "run `mesh provider register` again")
    result = probe([(offer, mh)])[address]
    m = result["manifest"]
    if as_json:
        echo_json({"address": address, "endpoint": offer.endpoint, "status": result["status"],
                   "reason": result["reason"], "model_id": m.model_id if m else None})
    elif m is not None:
        click.echo(f"{address} at {offer.endpoint}: reachable, manifest accepted "
                   f"({m.model_id}, {m.quantization}, ctx {m.context_length}, {format_price(m.price_per_token)})")
    if result["status"] == "unreachable":
        raise ConfigError(f"consumers cannot reach {address} at {offer.endpoint}: {result['reason']}",
                          "is `mesh provider start` running, and does its --announce address reach it from the "
                          "consumers' network (firewall, NAT)?")
    if result["status"] == "rejected":
        raise ConfigError(f"consumers reject the manifest of {address}: {result['reason']}",
                          "run `mesh provider register` again and restart the node")


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
@click.argument("amount", callback=amount_callback)
@account_option
@rpc_option
@json_option
def unstake(amount, account_name, rpc, as_json) -> None:
    """Start thawing AMOUNT of free stake; withdraw it after the thaw period."""
    chain = open_chain(rpc)
    acct = _account(account_name, chain)
    mc = MarketClient(chain)
    mc.request_unstake(acct, amount)
    a = mc.account(acct.address)
    if as_json:
        echo_json({"address": acct.address, "unstaked": amount, "stake": a["stake"], "thawing": a["thawing"],
                   "thaw_ready_at": a["thaw_ready_at"]})
    else:
        click.echo(f"{format_amount(a['thawing'])} thawing, withdrawable "
                   f"{format_when(a['thaw_ready_at'], chain.pending_time())} (`mesh provider withdraw`)")


@provider.command()
@account_option
@rpc_option
@json_option
def withdraw(account_name, rpc, as_json) -> None:
    """Withdraw earnings, and thawed stake whose thaw period is over."""
    chain = open_chain(rpc)
    acct = _account(account_name, chain)
    mc = MarketClient(chain)
    a = mc.account(acct.address)
    now = chain.pending_time()
    earned = a["owed"]
    thawed = a["thawing"] if a["thawing"] and now >= a["thaw_ready_at"] else 0
    if earned:
        mc.withdraw_earnings(acct)
    if thawed:
        mc.withdraw_stake(acct)
    still = a["thawing"] - thawed
    balance = chain.balance(acct.address)
    if as_json:
        echo_json({"address": acct.address, "earnings": earned, "stake": thawed, "balance": balance,
                   "thawing": still, "thaw_ready_at": a["thaw_ready_at"] if still else None})
        return
    done = ([f"earnings {format_amount(earned)}"] if earned else []) + ([f"stake {format_amount(thawed)}"] if thawed else [])
    later = f"{format_amount(still)} thawing, withdrawable {format_when(a['thaw_ready_at'], now)}" if still else ""
    if not done:
        click.echo("nothing to withdraw" + (f" yet: {later}" if later else ""))
        return
    click.echo("withdrew " + " and ".join(done) + f"; balance {format_amount(balance)}" + (f"; {later}" if later else ""))


@provider.command()
@click.argument("address")
@click.option("--group", "group", required=True, metavar="NAME", help="The private mesh you are the admin of.")
@click.option("--revoke", is_flag=True, help="Withdraw the invitation (a provider already in stays until it leaves).")
@account_option
@rpc_option
@json_option
def invite(address, group, revoke, account_name, rpc, as_json) -> None:
    """Let provider ADDRESS register in your private mesh (you are its admin if you registered in
    it first)."""
    from eth_utils import is_address, to_checksum_address

    from meshmarket.mesh.market import group_id

    if not is_address(address):
        raise click.BadParameter(f"{address!r} is not an address", param_hint="ADDRESS")
    chain = open_chain(rpc)
    acct = _account(account_name, chain)
    mc = MarketClient(chain)
    gid = group_id(group)
    admin = mc.group_admin(gid)
    if admin != acct.address:
        raise ConfigError(f"{acct.address} is not the admin of the mesh {group!r}"
                          + (f" (its admin is {admin})" if admin else " (nobody registered in it yet)"),
                          "the first provider to register in a mesh is its admin: ask that provider to invite")
    mc.invite(acct, gid, to_checksum_address(address), not revoke)
    if as_json:
        echo_json({"group": group, "group_id": "0x" + gid.hex(), "provider": to_checksum_address(address),
                   "admitted": not revoke})
    else:
        click.echo(f"{to_checksum_address(address)} {'may no longer register' if revoke else 'may now register'} "
                   f"in {group!r} (`mesh provider register --group {group}`)")


@provider.command()
@account_option
@rpc_option
@json_option
def deregister(account_name, rpc, as_json) -> None:
    """Leave the pool: no new job draws this provider. Its stake stays until unstaked and withdrawn."""
    chain = open_chain(rpc)
    acct = _account(account_name, chain)
    mc = MarketClient(chain)
    a = mc.account(acct.address)
    if not a["listed"]:
        raise ConfigError(f"{acct.address} is not registered as a provider on this market", "nothing to deregister")
    if a["locked"]:
        raise ConfigError(f"{format_amount(a['locked'])} of {acct.address}'s stake is locked by contested jobs: "
                          "it stays registered until they close",
                          "keep `mesh provider start` running (it answers disputes and juries), and deregister "
                          "when `mesh provider status` shows nothing locked")
    mc.deregister(acct)
    if as_json:
        echo_json({"address": acct.address, "deregistered": True, "stake": a["stake"], "owed": a["owed"]})
        return
    click.echo(f"deregistered {acct.address}: no new job draws it (jobs already drawn still count on it: keep the "
               "node running until they are paid)")
    if a["stake"]:
        click.echo(f"its stake {format_amount(a['stake'])} stays in the registry: `mesh provider unstake "
                   f"{a['stake']}u`, then `mesh provider withdraw` after the thaw period")


def _address(account_name) -> str:
    """The provider's address, without its key: --account, $MESH_ACCOUNT, or the one registered here."""
    import os

    from eth_utils import is_address, to_checksum_address

    from meshmarket.mesh import keys
    from meshmarket.provider.runtime import ProviderSettings

    name = account_name or os.environ.get("MESH_ACCOUNT") or ProviderSettings.load().account
    if name.startswith("dev:"):
        return keys.load_account(name, None).address
    if not is_address(name):
        raise click.BadParameter(f"{name!r} is not an address", param_hint="--account")
    return to_checksum_address(name)
