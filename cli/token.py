"""`mesh token faucet|balance|approve|deposit|credit|withdraw-credit`: the MESH token, and the
consumer's credit in the vault (the registry)."""

from __future__ import annotations

import click
from eth_utils import is_address, to_checksum_address

from meshmarket.cli.common import (account_option, amount_callback, echo_json, json_option, open_chain, resolve_account,
                        rpc_option, table)
from meshmarket.mesh import config, keys
from meshmarket.mesh.errors import ConfigError
from meshmarket.mesh.types import format_amount

WEI_PER_ETH = 10**18


def _eth(ctx, param, value):
    """--eth: whole or decimal ETH -> wei (no floats)."""
    whole, _, frac = value.strip().partition(".")
    if not (whole or "0").isdigit() or not (frac or "0").isdigit() or len(frac) > 18:
        raise click.BadParameter(f"{value!r} is not an amount of ETH (e.g. 10 or 0.5)")
    return int(whole or "0") * WEI_PER_ETH + int(frac.ljust(18, "0") or "0")


def _targets(addresses) -> list[str]:
    for a in addresses:
        if not is_address(a):
            raise click.BadParameter(f"{a!r} is not an Ethereum address", param_hint="ADDRESSES")
    return [to_checksum_address(a) for a in addresses]


def _minter(chain):
    """The token's owner among the dev accounts (whoever deployed the local market)."""
    owner = chain.token.functions.owner().call()
    for i in range(keys.DEV_ACCOUNT_COUNT):
        if keys.dev_account(i).address == owner:
            return keys.dev_account(i)
    raise ConfigError(f"the token's owner {owner} is not a dev account, so nobody here can mint",
                      "ask the market's operator for MESH")


@click.group()
def token() -> None:
    """The MESH token: 6 decimals; amounts accept '12.5' (MESH) or '12500000u' (base units)."""


@token.command()
@click.argument("addresses", nargs=-1)
@click.option("--amount", default="1000", callback=amount_callback, show_default=True, help="MESH per address.")
@click.option("--eth", default="10", callback=_eth, show_default=True,
              help="Top each address up to this much ETH for gas (0: leave ETH alone).")
@rpc_option
@json_option
def faucet(addresses: tuple[str, ...], amount: int, eth: int, rpc: str | None, as_json: bool) -> None:
    """Local chain only: mint test MESH and give ETH for gas (default: to this directory's keystore
    accounts and every dev account but dev:0)."""
    chain = open_chain(rpc)
    if chain.chain_id != config.ANVIL_CHAIN_ID:
        raise ConfigError(f"the faucet only runs on the local chain (31337); this is chain {chain.chain_id}",
                          "buy or receive MESH and ETH on a real chain")
    targets = _targets(addresses) or keys.list_accounts() + [keys.dev_account(i).address
                                                            for i in range(1, keys.DEV_ACCOUNT_COUNT)]
    minter = _minter(chain) if amount else None
    rows = []
    for a in targets:
        if amount:
            chain.transact(minter, chain.token.functions.mint(a, amount))
        wei = chain.w3.eth.get_balance(a)
        if wei < eth:  # anvil_setBalance is the local node's own faucet: no sender needs the ETH
            chain.w3.provider.make_request("anvil_setBalance", [a, hex(eth)])
            wei = eth
        rows.append({"address": a, "minted": amount, "balance": chain.balance(a), "eth_wei": wei})
    if as_json:
        echo_json({"faucet": rows})
        return
    for r in rows:
        click.echo(f"{r['address']}  +{format_amount(r['minted'])}  -> {format_amount(r['balance'])}, "
                   f"{r['eth_wei'] / WEI_PER_ETH:g} ETH for gas")


@token.command()
@click.argument("addresses", nargs=-1)
@rpc_option
@json_option
def balance(addresses: tuple[str, ...], rpc: str | None, as_json: bool) -> None:
    """MESH balances (default: the keystore accounts and the dev accounts)."""
    chain = open_chain(rpc)
    targets = _targets(addresses) or keys.list_accounts() + [keys.dev_account(i).address for i in range(keys.DEV_ACCOUNT_COUNT)]
    rows = {a: chain.balance(a) for a in targets}
    if as_json:
        echo_json({"balances": rows})
    else:
        click.echo(table([[a, format_amount(v)] for a, v in rows.items()], ["address", "balance"]))


@token.command()
@click.argument("amount", callback=amount_callback)
@account_option
@rpc_option
@json_option
def approve(amount: int, account_name: str | None, rpc: str | None, as_json: bool) -> None:
    """Let the registry (the market's vault) take up to AMOUNT for escrow and stake."""
    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    chain.transact(acct, chain.token.functions.approve(chain.registry.address, amount))
    if as_json:
        echo_json({"address": acct.address, "spender": chain.registry.address,
                   "allowance": chain.allowance(acct.address, chain.registry.address)})
    else:
        click.echo(f"{acct.address} approved {format_amount(amount)} for the registry {chain.registry.address}")


@token.command()
@click.argument("amount", callback=amount_callback)
@account_option
@rpc_option
@json_option
def deposit(amount: int, account_name: str | None, rpc: str | None, as_json: bool) -> None:
    """Prepay AMOUNT as credit in the vault: queries spend credit first, with no token transfer."""
    from meshmarket.mesh.market import MarketClient

    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    chain.require_balance(acct.address, amount, "the deposit")
    mc = MarketClient(chain)
    mc.deposit(acct, amount)
    credit = mc.credit(acct.address)
    if as_json:
        echo_json({"address": acct.address, "deposited": amount, "credit": credit, "balance": chain.balance(acct.address)})
    else:
        click.echo(f"{acct.address}: credit {format_amount(credit)}")


@token.command()
@account_option
@rpc_option
@json_option
def credit(account_name: str | None, rpc: str | None, as_json: bool) -> None:
    """Your credit in the vault (deposits and refunds not yet spent)."""
    from meshmarket.mesh.market import MarketClient

    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    value = MarketClient(chain).credit(acct.address)
    if as_json:
        echo_json({"address": acct.address, "credit": value})
    else:
        click.echo(f"{acct.address}: credit {format_amount(value)}")


@token.command(name="withdraw-credit")
@account_option
@rpc_option
@json_option
def withdraw_credit(account_name: str | None, rpc: str | None, as_json: bool) -> None:
    """Take your whole credit back to your wallet."""
    from meshmarket.mesh.market import MarketClient

    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    mc = MarketClient(chain)
    amount = mc.credit(acct.address)
    mc.withdraw_credit(acct)
    wallet = chain.balance(acct.address)
    if as_json:
        echo_json({"address": acct.address, "withdrawn": amount, "balance": wallet})
    else:
        click.echo(f"{acct.address}: withdrew {format_amount(amount)}; wallet {format_amount(wallet)}")
