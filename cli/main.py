"""`mesh`: the root command group. Each group lives in cli/<group>.py.

Errors: library code raises MeshError subclasses; this root group turns them into one line
("Error: <what> — <what to do>") and exit code 1, never a traceback.
"""

from __future__ import annotations

import click

from cli import account, chain, consumer, contracts, demo, ledger, provider, token
from mesh import __version__
from mesh.errors import MeshError


class MeshGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MeshError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            raise click.Abort() from None


@click.group(cls=MeshGroup)
@click.version_option(__version__, prog_name="mesh")
def main() -> None:
    """Meshmarket: a peer-to-peer market for LLM inference, verified three ways on-chain."""


for _group in (chain.chain, contracts.contracts, token.token, account.account, provider.provider,
               consumer.ask, consumer.models, consumer.settle, ledger.ledger, demo.demo):
    main.add_command(_group)


if __name__ == "__main__":
    main()
