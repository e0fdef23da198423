"""`mesh account new|import|list`: eth-account encrypted keystores. Keys never go on the command line."""

from __future__ import annotations

import os
import sys

import click

from meshmarket.cli.common import echo_json, json_option
from meshmarket.mesh import keys


def _new_password() -> str:
    env = os.environ.get("MESH_PASSWORD")
    if env is not None:
        return env
    return click.prompt("Password for the new keystore", hide_input=True, confirmation_prompt=True, err=True)


def _created(address: str, path, as_json: bool) -> None:
    if as_json:
        echo_json({"address": address, "keystore": str(path)})
    else:
        click.echo(f"{address}  ({path})")
        click.echo("on the local chain, `mesh token faucet` gives it MESH and ETH for gas", err=True)


@click.group()
def account() -> None:
    """Create, import and list keystore accounts (passwords from a prompt or $MESH_PASSWORD)."""


@account.command()
@json_option
def new(as_json: bool) -> None:
    """Create a new account in an encrypted keystore."""
    acct, path = keys.new_account(_new_password())
    _created(acct.address, path, as_json)


@account.command(name="import")
@json_option
def import_(as_json: bool) -> None:
    """Import a private key, read from a hidden prompt (or standard input when piped)."""
    if sys.stdin.isatty():
        secret = click.prompt("Private key (hex)", hide_input=True, err=True)
    else:
        secret = sys.stdin.readline().strip()
    acct, path = keys.import_key(secret, _new_password())
    _created(acct.address, path, as_json)


@account.command(name="list")
@json_option
def list_(as_json: bool) -> None:
    """List keystore accounts."""
    found = keys.list_accounts()
    if as_json:
        echo_json({"accounts": found, "keystore": str(keys.keystore_dir())})
        return
    if not found:
        click.echo("no accounts yet: `mesh account new` creates one")
    for a in found:
        click.echo(a)
