"""Options and helpers shared by the command groups."""

from __future__ import annotations

import json
import os

import click
from eth_account.signers.local import LocalAccount

from mesh import config, keys
from mesh.chain import Chain
from mesh.config import Deployment

rpc_option = click.option("--rpc", "rpc", default=None, metavar="URL",
                          help="JSON-RPC URL of the chain (default: $MESH_RPC_URL, the deployment's, or Anvil's 8545).")
account_option = click.option("--account", "account_name", default=None, metavar="ADDRESS|dev:N",
                              help="Signing account: a keystore address, or dev:N on the local chain. Default: $MESH_ACCOUNT.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")


def open_chain(rpc: str | None) -> Chain:
    return Chain.open(Deployment.load(), config.rpc_url(rpc))


def resolve_account(name: str | None, chain_id: int | None, default: str | None = None) -> LocalAccount:
    """Load the signing account; the keystore password comes from $MESH_PASSWORD or a prompt."""
    name = name or os.environ.get("MESH_ACCOUNT") or default
    if not name:
        raise click.UsageError("no account given: pass --account ADDRESS (see `mesh account list`) or set MESH_ACCOUNT")
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
