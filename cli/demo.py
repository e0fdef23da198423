"""`mesh demo`: the whole market on the embedded defaults, start to finish, in a few minutes.

A private Anvil chain; the contracts deployed; six providers started as separate processes
(`mesh provider register` + `mesh provider start`), one of them a cheater that signs altered
answers; a consumer asks questions with visible streaming. Each job's three seats are drawn by the
contract, weighted by stake: nobody picks them. When the cheater is drawn, the seats disagree, the
consumer disputes, the three providers not seated are drawn as the jury, score every seat's tokens
under the model and vote; the demo moves the local chain's clock through the court's phases. The
cheater is slashed; the honest seats are paid. The demo asks until the cheater has been drawn at
least once (bounded). A final table shows balances and stakes. Everything is shut down on exit,
also on Ctrl-C.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from meshmarket.cli.common import table
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.types import format_amount

MESH = 10**6
#: dev account -> price per output token. Seats are drawn by stake (100 MESH each), not by price.
PROVIDERS = {1: 10, 2: 10, 3: 10, 4: 10, 5: 10, 6: 10}
CHEATER = 1
CONSUMER = 7
QUESTIONS = (
    "What is the capital of France? Answer in one sentence.",
    "Name three primary colours.",
    "Why is the sky blue? One sentence.",
)
#: Asked after the questions while the cheater has not been drawn yet (it sits on a job with
#: probability 1/2: thirteen jobs miss it with probability 0.5^13, about 1e-4).
MORE_QUESTIONS = ("Name a planet.", "What is 2 + 3?", "Name a fruit.", "Say hello.", "Name an ocean.",
                  "What colour is grass?", "Name a month.", "Name a tree.", "Say goodbye.", "Name a river.")
#: The sybil attempt: the attacker's consumer account, its two sybil providers, and the victim.
SYBIL_OWNER, SYBILS, VICTIM = 8, (9, 10), 2
SYBIL_TRIES = 5
#: Seconds between the providers' checks of their claims and jury duties (the demo's clock jumps).
KEEPER_POLL = "0.5"


@click.command()
@click.option("--max-tokens", type=click.IntRange(8, 512), default=32, show_default=True)
@click.option("--question", "questions", multiple=True, help="Ask these instead of the built-in questions.")
def demo(max_tokens: int, questions: tuple[str, ...]) -> None:
    """Run a private market: chain, contracts, six providers (one cheating), verified paid queries."""
    from meshmarket.cli.devnet import start_meshnet

    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
    net = None
    try:
        click.secho("== starting a private chain, the contracts, and six providers (separate processes)", bold=True)
        net = start_meshnet(root, PROVIDERS, cheaters=(CHEATER,), extra=("--claim-poll", KEEPER_POLL),
                            on_line=_court_lines)
        d = net.deployment
        click.echo(f"chain {net.url} (id {d.chain_id}); token {d.token}; registry {d.registry}; market {d.market}")
        for i, price in PROVIDERS.items():
            p = net.providers[i]
            note = "  <- cheater: signs altered answers" if i == CHEATER else ""
            click.echo(f"provider dev:{i} {p.address} price {price}/token, stake 100 MESH, {p.addrs[0]}{note}")
        click.echo(f"ready in {time.monotonic() - t0:.1f} s")
        _ask_all(net, root, max_tokens, list(questions or QUESTIONS))
        _sybil_attempt(net)
        _final_table(net)
        click.secho(f"\ndone in {time.monotonic() - t0:.1f} s", bold=True)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: shutting everything down", err=True)
        raise SystemExit(130)
    finally:
        if net is not None:
            net.close()
        shutil.rmtree(root, ignore_errors=True)


def _court_lines(index: int, line: str) -> None:
    """Show what the providers' keepers do in a court (the rest of their output stays quiet)."""
    if line.startswith("jury ") or "disputed" in line or "evidence" in line:
        click.echo(f"   [dev:{index}] {line}")


def _ask_all(net, root: Path, max_tokens: int, questions: list[str]) -> None:
    from meshmarket.cli.consumer import print_receipt
    from meshmarket.consumer.ask import AskOptions, Asker, discover
    from meshmarket.consumer.journal import Journal
    from meshmarket.consumer.selection import Selector

    consumer = dev_account(CONSUMER)
    net.fund(CONSUMER)
    net.mc.deposit(consumer, 10 * MESH)  # prepaid credit: each query then needs no token transfer
    journal = Journal(root / "consumer-jobs")
    selector = Selector.open(net.chain, url=f"sqlite:///{root / 'consumer-ledger.sqlite'}", consumer=consumer.address)
    cheater = dev_account(CHEATER).address
    extra, drawn = list(MORE_QUESTIONS), False
    k = 0
    while questions or (not drawn and extra):
        q = questions.pop(0) if questions else extra.pop(0)
        k += 1
        click.secho(f"\n== query {k}: {q}" + ("" if k <= 3 or drawn else "  (the cheater has not been drawn yet)"),
                    bold=True)
        asker = Asker(net.chain, consumer, journal=journal, observe=selector.observe)
        receipt = asker.ask([("user", q)], net.model_hash, discover(net.chain, net.model_hash),
                            AskOptions(max_tokens=max_tokens, max_price=20, dispute=True), sink=_show)
        click.echo()
        if receipt.streamed != receipt.text:
            click.secho("[the streamed answer is not the one the majority signed; that one is:]", bold=True)
            click.echo(receipt.text)
        print_receipt(receipt)
        drawn = drawn or any(s.provider == cheater for s in receipt.slots)
        if receipt.outcome == "contested":
            click.secho("-- the court: a jury drawn from the pool judges every seat", bold=True)
            st = net.fast_forward_court(receipt.job_id, consumer, journal, say=lambda m: click.echo(f"   {m}"))
            _verdict(net, receipt, st)
        selector.sync()  # the outcome (and any slash) is now in the consumer's ledger
    selector.close()


def _show(event) -> None:
    """The streamed seat's text as it comes; what happens to the job on lines of its own."""
    from meshmarket.cli.consumer import describe
    from meshmarket.consumer.query_events import SeatToken

    if isinstance(event, SeatToken):
        if event.streamed:
            click.echo(event.text, nl=False)
            sys.stdout.flush()
        return
    line = describe(event)
    if line is not None:
        click.echo(f"   {line}")


def _verdict(net, receipt, st) -> None:
    from meshmarket.mesh.market import OUTCOMES

    ev = st.settled
    rows = []
    for s in receipt.slots:
        slashed = st.contest.locks[s.index] if ev["slashMask"] >> s.index & 1 else 0
        role = "cheater" if s.provider == dev_account(CHEATER).address else "honest"
        rows.append([str(s.index), s.provider, role, format_amount(int(ev["paid"][s.index])),
                     format_amount(slashed) if slashed else "-"])
    click.secho(f"job 0x{receipt.job_id.hex()} closed: {OUTCOMES[ev['outcome']]}", bold=True)
    click.echo(table(rows, ["#", "provider", "role", "paid", "slashed (burned)"]))
    click.echo(f"refund to the consumer's credit {format_amount(int(ev['refund']))}")


def _sybil_attempt(net) -> None:
    """v1's worst attack, tried on v2: a consumer with two sybil providers wants to sit them with an
    honest victim, so that two bogus signatures outvote it. It cannot choose the seats."""
    from eth_utils import keccak

    from meshmarket.mesh.market import MarketClient

    attacker, sybils, victim = dev_account(SYBIL_OWNER), [dev_account(i) for i in SYBILS], dev_account(VICTIM)
    click.secho(f"\n== a consumer with two sybil providers tries to sit them with dev:{VICTIM}", bold=True)
    mc = MarketClient(net.chain)
    for i in (*SYBILS, SYBIL_OWNER):
        net.fund(i)
    for k, s in enumerate(sybils):
        mc.register(s, net.model_hash, keccak(b"sybil manifest %d" % k), 10)
        mc.stake(s, 100 * MESH)
    net.mc.deposit(attacker, 1 * MESH)
    hits, jobs = 0, []
    for k in range(SYBIL_TRIES):
        _, job, _ = mc.open_job(attacker, net.model_hash, keccak(b"bait %d" % k), 8, 20, approve=False)
        job, _ = mc.draw_seats(attacker, job)
        jobs.append(job)
        seats = set(job.seats[:3])
        hit = victim.address in seats and all(s.address in seats for s in sybils)
        hits += hit
        names = ", ".join(_who(a) for a in job.seats[:3])
        click.echo(f"   job {k + 1}: seats drawn by the contract: {names}{'  <- the attacker got its committee' if hit else ''}")
    click.echo(f"   the attacker got its committee {hits} of {SYBIL_TRIES} times (chance per job with these stakes: "
               "1 in 56); and even then two bogus signatures convict nobody: a disagreement pays the majority "
               "provisionally, the victim disputes, and a jury drawn from the pool decides")
    # The bait jobs had no requests: nobody delivered; they settle as refunds after the claim window.
    p = net.deployment.params
    net.advance(p.delivery_window + p.claim_window)
    for job in jobs:
        mc.settle(attacker, job, [])
    for s in sybils:
        mc.deregister(s)
    click.echo(f"   dev:{VICTIM}'s stake: {format_amount(net.mc.account(victim.address)['stake'])} (untouched); the "
               "bait jobs were refunded, the sybils left the pool")


def _who(address: str) -> str:
    i = next(i for i in range(20) if dev_account(i).address == address)
    role = " (sybil)" if i in SYBILS else " (victim)" if i == VICTIM else ""
    return f"dev:{i}{role}"


def _final_table(net) -> None:
    click.secho("\n== final balances (base units are exact; MESH has 6 decimals)", bold=True)
    rows = []
    for i in list(PROVIDERS) + [CONSUMER]:
        a = dev_account(i).address
        acct = net.mc.account(a)
        role = "consumer" if i == CONSUMER else ("provider (cheater)" if i == CHEATER else "provider")
        rows.append([f"dev:{i}", role, format_amount(net.chain.balance(a)), format_amount(acct["stake"]),
                     format_amount(acct["owed"]), format_amount(net.mc.credit(a))])
    click.echo(table(rows, ["account", "role", "wallet", "stake", "earned (to withdraw)", "credit"]))
