"""`mesh demo`: the whole market on the embedded defaults, start to finish, in under two minutes.

A private Anvil chain; the contracts deployed; four providers started as separate processes
(`mesh provider start`), the cheapest of them a cheater that alters its output; a consumer asks
a few questions with visible streaming; receipts show the cheater outvoted and slashed; a final
table shows balances and stakes. Everything is shut down on exit, also on Ctrl-C.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from cli.common import table
from mesh.keys import dev_account
from mesh.types import format_amount

MESH = 10**6
#: dev account -> price per output token; the cheater is the cheapest, so it is picked first.
PROVIDERS = {1: 8, 2: 10, 3: 10, 4: 12}
CHEATER = 1
CONSUMER = 5
QUESTIONS = (
    "What is the capital of France? Answer in one sentence.",
    "Name three primary colours.",
    "Why is the sky blue? One sentence.",
)


@click.command()
@click.option("--max-tokens", type=click.IntRange(8, 512), default=48, show_default=True)
@click.option("--question", "questions", multiple=True, help="Ask these instead of the built-in questions.")
def demo(max_tokens: int, questions: tuple[str, ...]) -> None:
    """Run a private mesh: chain, contracts, four providers (one cheating), verified paid queries."""
    from consumer.ask import AskOptions, Asker, discover, eligible
    from consumer.journal import Journal
    from cli.consumer import print_receipt
    from consumer.selection import Selector
    from cli.devnet import start_meshnet

    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
    net = None
    try:
        click.secho("== starting a private chain, the contracts, and four providers (separate processes)", bold=True)
        net = start_meshnet(root, PROVIDERS, cheaters=(CHEATER,))
        d = net.deployment
        click.echo(f"chain {net.url} (id {d.chain_id}); token {d.token}; registry {d.registry}; market {d.market}")
        for i, price in PROVIDERS.items():
            p = net.providers[i]
            note = "  <- cheater: alters its answers" if i == CHEATER else ""
            click.echo(f"provider dev:{i} {p.address} price {price}/token, stake 100 MESH, {p.addrs[0]}{note}")
        click.echo(f"ready in {time.monotonic() - t0:.1f} s")

        consumer = dev_account(CONSUMER)
        net.fund(CONSUMER)
        net.mc.deposit(consumer, 10 * MESH)  # prepaid credit: each query then needs no token transfer
        journal = Journal(root / "consumer-jobs")
        selector = Selector.open(net.chain, url=f"sqlite:///{root / 'consumer-ledger.sqlite'}")
        for k, q in enumerate(questions or QUESTIONS, 1):
            click.secho(f"\n== query {k}: {q}", bold=True)
            offers = eligible(net.chain, discover(net.chain, net.model_hash), consumer.address, max_tokens, 20)
            asker = Asker(net.chain, consumer, journal=journal, rank=selector.rank, observe=selector.observe,
                          on_event=lambda m: click.echo(f"   {m}"))
            receipt = asker.ask([("user", q)], net.model_hash, offers, AskOptions(max_tokens=max_tokens, max_price=20),
                                on_token=lambda t: (click.echo(t, nl=False), sys.stdout.flush()))
            click.echo()
            if receipt.streamed != receipt.text:
                click.secho("[the streamed answer was outvoted; the verified answer:]", bold=True)
                click.echo(receipt.text)
            print_receipt(receipt)
            selector.sync()  # the outcome (and any slash) now weighs on the next selection
        selector.close()

        click.secho("\n== final balances (base units are exact; MESH has 6 decimals)", bold=True)
        rows = []
        for i in list(PROVIDERS) + [CONSUMER]:
            a = dev_account(i).address
            acct = net.mc.account(a)
            role = "consumer" if i == CONSUMER else ("provider (cheater)" if i == CHEATER else "provider")
            rows.append([f"dev:{i}", role, format_amount(net.chain.balance(a)), format_amount(acct["stake"]),
                         format_amount(acct["owed"]), format_amount(net.mc.credit(a))])
        click.echo(table(rows, ["account", "role", "wallet", "stake", "earned (to withdraw)", "credit"]))
        click.secho(f"\ndone in {time.monotonic() - t0:.1f} s", bold=True)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: shutting everything down", err=True)
        raise SystemExit(130)
    finally:
        if net is not None:
            net.close()
        shutil.rmtree(root, ignore_errors=True)
