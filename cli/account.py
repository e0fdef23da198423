"""`mesh account new|import|list`: eth-account encrypted keystores. Keys never go on the command line."""

from __future__ import annotations

import os
import sys

import click

from mesh import keys


def _new_password() -> str:
    env = os.environ.get("MESH_PASSWORD")
    if env is not None:
        return env
    return click.prompt("Password for the new keystore", hide_input=True, confirmation_prompt=True)


@click.group()
def account() -> None:
    """Create, import and list keystore accounts (passwords from a prompt or $MESH_PASSWORD)."""


@account.command()
def new() -> None:
    """Create a new account in an encrypted keystore."""
    acct, path = keys.new_account(_new_password())
    click.echo(f"{acct.address}  ({path})")


@account.command(name="import")
def import_() -> None:
    """Import a private key, read from a hidden prompt (or standard input when piped)."""
    if sys.stdin.isatty():
        secret = click.prompt("Private key (hex)", hide_input=True)
    else:
        secret = sys.stdin.readline().strip()
    acct, path = keys.import_key(secret, _new_password())
    click.echo(f"{acct.address}  ({path})")


@account.command(name="list")
def list_() -> None:
    """List keystore accounts."""
    found = keys.list_accounts()
    if not found:
        click.echo("no accounts yet: `mesh account new` creates one")
    for a in found:
        click.echo(a)
