"""Options and helpers shared by the command groups: the chain, the signing account, amounts and
prices (one parser each, mesh.types), JSON output and tables."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import click

from meshmarket.mesh import config
from meshmarket.mesh.limits import MAX_PRICE
from meshmarket.mesh.types import parse_amount, parse_price

if TYPE_CHECKING:  # web3 and eth-account take a second to import: only the commands that sign pay for it
    from eth_account.signers.local import LocalAccount

    from meshmarket.mesh.chain import Chain

rpc_option = click.option("--rpc", "rpc", default=None, metavar="URL",
                          help="JSON-RPC URL of the chain (default: $MESH_RPC_URL, the recorded market's, or the "
                               "chain `mesh chain up` runs).")
account_option = click.option("--account", "account_name", default=None, metavar="ADDRESS|dev:N",
                              help="Signing account: a keystore address, or dev:N on the local chain. Default: "
                                   "$MESH_ACCOUNT, else the only keystore account.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")


def amount_callback(ctx, param, value):
    """A click callback: '12.5' (MESH) or '12500000u' (base units) -> base units."""
    if value is None:
        return None
    try:
        return parse_amount(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def price_callback(ctx, param, value):
    """A click callback: a price per output token (mesh.types.parse_price) -> base units per token."""
    if value is None:
        return None
    try:
        price = parse_price(str(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not 1 <= price <= MAX_PRICE:
        raise click.BadParameter(f"a price is 1 to {MAX_PRICE:,} base units per token, not {price:,}")
    return price


def open_chain(rpc: str | None) -> Chain:
    from meshmarket.mesh.chain import Chain

    return Chain.open(config.Deployment.load(), config.rpc_url(rpc))


def account_name(name: str | None, default: str | None = None) -> str:
    """--account, else $MESH_ACCOUNT, else `default`, else the only keystore account here."""
    name = name or os.environ.get("MESH_ACCOUNT") or default
    if name:
        return name
    from meshmarket.mesh import keys

    found = keys.list_accounts()
    if len(found) == 1:
        return found[0]
    hint = (f"{len(found)} keystore accounts are here ({', '.join(found)})" if found else "no keystore account is here")
    raise click.UsageError(f"no account given and {hint}: pass --account ADDRESS (or dev:N on the local chain), "
                           "or set MESH_ACCOUNT")


def resolve_account(name: str | None, chain_id: int | None, default: str | None = None) -> LocalAccount:
    """Load the signing account; the keystore password comes from $MESH_PASSWORD or a prompt."""
    from meshmarket.mesh import keys

    name = account_name(name, default)
    password = None
    if not name.startswith("dev:") and keys.has_keystore(name):
        password = os.environ.get("MESH_PASSWORD")
        if password is None:
            password = click.prompt(f"Password for {name}", hide_input=True)
    return keys.load_account(name, password, chain_id)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=_default))


def _default(v):
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    raise TypeError(f"cannot encode {type(v).__name__}")


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])
