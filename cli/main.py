"""`mesh`: the root command group. Each group lives in cli/<group>.py and is imported only when it
runs (`mesh ask` does not pay for the ledger's or the provider's imports).

Errors: library code raises MeshError subclasses; this root group turns them into one line
("Error: <what> — <what to do>", the advice looked up by the error's code in cli/errors.py) and
exit code 1, never a traceback.
"""

from __future__ import annotations

import importlib

import click

from meshmarket.cli.errors import sentence
from meshmarket.mesh import __version__
from meshmarket.mesh.errors import MeshError, sole_error

#: command name -> "module:attribute" of its click command or group.
COMMANDS = {
    "chain": "meshmarket.cli.chain:chain",
    "contracts": "meshmarket.cli.contracts:contracts",
    "market": "meshmarket.cli.market:market",
    "token": "meshmarket.cli.token:token",
    "account": "meshmarket.cli.account:account",
    "provider": "meshmarket.cli.provider:provider",
    "ask": "meshmarket.cli.consumer:ask",
    "models": "meshmarket.cli.market:models",
    "settle": "meshmarket.cli.consumer:settle",
    "ledger": "meshmarket.cli.ledger:ledger",
    "demo": "meshmarket.cli.demo:demo",
    "devnet": "meshmarket.cli.localnet:devnet",
    "serve": "meshmarket.cli.gateway:serve",
}


class MeshGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MeshError as exc:
            raise click.ClickException(sentence(exc)) from exc
        except KeyboardInterrupt:
            raise click.Abort() from None
        except BaseExceptionGroup as group:
            # trio (and libp2p's nurseries) wrap what a task raised: show the error itself.
            leaf = sole_error(group)
            if isinstance(leaf, MeshError):
                raise click.ClickException(sentence(leaf)) from group
            if isinstance(leaf, KeyboardInterrupt):
                raise click.Abort() from None
            raise



@click.group(cls=MeshGroup)
@click.version_option(__version__, prog_name="mesh")
def main() -> None:
    """Meshmarket: a peer-to-peer market for LLM inference, verified on-chain by seats nobody chooses."""


if __name__ == "__main__":
    main()
