"""`mesh token faucet|balance|approve`: the MESH token."""

from __future__ import annotations

import click
from eth_utils import is_address, to_checksum_address

from mesh import config, keys
from cli.common import account_option, echo_json, json_option, open_chain, resolve_account, rpc_option, table
from mesh.errors import ConfigError
from mesh.types import format_amount, parse_amount


def _amount(ctx, param, value):
    try:
        return parse_amount(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.group()
def token() -> None:
    """The MESH token: 6 decimals; amounts accept '12.5' (MESH) or '12500000u' (base units)."""


@token.command()
@click.argument("addresses", nargs=-1)
@click.option("--amount", default="1000", callback=_amount, show_default=True, help="MESH per address.")
@rpc_option
def faucet(addresses: tuple[str, ...], amount: int, rpc: str | None) -> None:
    """Mint test MESH on the local chain (default: to dev accounts 1-9)."""
    chain = open_chain(rpc)
    if chain.chain_id != config.ANVIL_CHAIN_ID:
        raise ConfigError("the faucet only runs on the local chain (31337)", "buy or receive MESH on a real chain")
    targets = list(addresses) or [keys.dev_account(i).address for i in range(1, keys.DEV_ACCOUNT_COUNT)]
    for a in targets:
        if not is_address(a):
            raise click.BadParameter(f"{a!r} is not an Ethereum address", param_hint="ADDRESSES")
    owner = keys.dev_account(0)
    for a in targets:
        chain.transact(owner, chain.token.functions.mint(to_checksum_address(a), amount))
        click.echo(f"{to_checksum_address(a)}  +{format_amount(amount)}  -> {format_amount(chain.balance(a))}")


@token.command()
@click.argument("addresses", nargs=-1)
@rpc_option
@json_option
def balance(addresses: tuple[str, ...], rpc: str | None, as_json: bool) -> None:
    """MESH balances (default: the keystore accounts and the dev accounts)."""
    chain = open_chain(rpc)
    targets = list(addresses) or keys.list_accounts() + [keys.dev_account(i).address for i in range(keys.DEV_ACCOUNT_COUNT)]
    rows = {}
    for a in targets:
        if not is_address(a):
            raise click.BadParameter(f"{a!r} is not an Ethereum address", param_hint="ADDRESSES")
        rows[to_checksum_address(a)] = chain.balance(a)
    if as_json:
        echo_json({"balances": rows})
    else:
        click.echo(table([[a, format_amount(v)] for a, v in rows.items()], ["address", "balance"]))


@token.command()
@click.argument("amount", callback=_amount)
@account_option
@rpc_option
def approve(amount: int, account_name: str | None, rpc: str | None) -> None:
    """Let the registry (the market's vault) take up to AMOUNT for escrow and stake."""
    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    chain.transact(acct, chain.token.functions.approve(chain.registry.address, amount))
    click.echo(f"{acct.address} approved {format_amount(amount)} for the registry {chain.registry.address}")


@token.command()
@click.argument("amount", callback=_amount)
@account_option
@rpc_option
def deposit(amount: int, account_name: str | None, rpc: str | None) -> None:
    """Prepay AMOUNT as credit in the vault: queries spend credit first, with no token transfer."""
    from mesh.market import MarketClient

    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    chain.require_balance(acct.address, amount, "the deposit")
    mc = MarketClient(chain)
    mc.deposit(acct, amount)
    click.echo(f"{acct.address}: credit {format_amount(mc.credit(acct.address))}")


@token.command()
@account_option
@rpc_option
@json_option
def credit(account_name: str | None, rpc: str | None, as_json: bool) -> None:
    """Your credit in the vault (deposits and refunds not yet spent)."""
    from mesh.market import MarketClient

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
def withdraw_credit(account_name: str | None, rpc: str | None) -> None:
    """Take your whole credit back to your wallet."""
    from mesh.market import MarketClient

    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    mc = MarketClient(chain)
    amount = mc.credit(acct.address)
    mc.withdraw_credit(acct)
    click.echo(f"{acct.address}: withdrew {format_amount(amount)}; wallet {format_amount(chain.balance(acct.address))}")
