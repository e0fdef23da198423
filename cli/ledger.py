"""`mesh ledger sync|jobs|providers|earnings|slashes`: the node's local ledger.

`sync` indexes the recorded deployment's events into the ledger; the other commands only read the
ledger (they work offline and show what the last sync saw). Amounts are shown in MESH; --json
gives base units as integers.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import click

from meshmarket.ledger import Ledger, Reputation, open_ledger
from meshmarket.ledger.indexer import DEFAULT_BATCH_BLOCKS, Indexer
from meshmarket.ledger.records import JOB_STATUSES, BatchResult
from meshmarket.cli.common import echo_json, json_option, open_chain, rpc_option, table
from meshmarket.mesh.types import format_amount

ledger_option = click.option("--ledger", "ledger_url", default=None, metavar="URL",
                             help="Ledger database URL (default: $MESH_LEDGER_URL, else $MESH_HOME/ledger.sqlite).")


def _short(h: str | None, n: int = 6) -> str:
    return "-" if not h else f"{h[: n + 2]}…{h[-4:]}"


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _amount(v: int | None) -> str:
    return "-" if v is None else format_amount(v)


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"


def _empty_hint(led: Ledger) -> None:
    if led.cursor() is None:
        click.echo("The ledger has not indexed any chain yet: run `mesh ledger sync`.", err=True)


@click.group()
def ledger() -> None:
    """The local ledger: jobs, providers, earnings and slashes indexed from the chain."""


@ledger.command()
@rpc_option
@ledger_option
@click.option("--reset", is_flag=True,
              help="Forget everything indexed from the chain (local observations stay) and index from the start.")
@click.option("--batch-blocks", type=click.IntRange(min=1), default=DEFAULT_BATCH_BLOCKS, show_default=True,
              help="Blocks per eth_getLogs call.")
@click.option("--confirmations", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stay this many blocks behind the head (for chains that reorganise).")
@json_option
def sync(rpc: str | None, ledger_url: str | None, reset: bool, batch_blocks: int, confirmations: int,
         as_json: bool) -> None:
    """Index the deployment's registry and market events into the ledger, once."""
    chain = open_chain(rpc)
    with open_ledger(ledger_url) as led:
        def progress(r: BatchResult) -> None:
            if not as_json:
                click.echo(f"  block {r.last_block:,}: +{r.applied:,} events", err=True)

        report = Indexer(led, chain, batch_blocks=batch_blocks, confirmations=confirmations).sync(
            reset=reset, on_batch=progress)
        Reputation(led).refresh(time.time())
        counts = led.counts()
        if as_json:
            echo_json({**dataclasses.asdict(report), "ledger": led.url,
                       "rows": {k: counts[k] for k in ("jobs", "providers", "payments", "slashes", "chain_events")}})
            return
        if report.batches == 0:
            click.echo(f"Up to date at block {report.to_block:,} (chain head {report.head:,}).")
        else:
            click.echo(f"Indexed {_n(report.events, 'new event')} from blocks {report.from_block:,}..{report.to_block:,} "
                       f"in {_n(report.batches, 'batch', 'batches')} ({report.seconds:.2f} s).")
        click.echo(f"Ledger: {_n(counts['jobs'], 'job')}, {_n(counts['providers'], 'provider')}, "
                   f"{_n(counts['slashes'], 'slash', 'slashes')} — {led.url}")


@ledger.command()
@ledger_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--status", type=click.Choice(JOB_STATUSES), default=None)
@click.option("--consumer", default=None, metavar="ADDRESS")
@click.option("--provider", default=None, metavar="ADDRESS", help="Jobs this provider served or was replaced in.")
@json_option
def jobs(ledger_url: str | None, limit: int, status: str | None, consumer: str | None, provider: str | None,
         as_json: bool) -> None:
    """Recent jobs, newest first, with each provider's outcome."""
    with open_ledger(ledger_url) as led:
        rows = led.jobs(limit=limit, status=status, consumer=consumer, provider=provider)
        if as_json:
            echo_json({"jobs": [dataclasses.asdict(j) | {"paid": j.paid} for j in rows]})
            return
        _empty_hint(led)
        click.echo(table(
            [[_short(j.job_id), _when(j.opened_at), _short(j.consumer, 4), j.status, _amount(j.escrow),
              _amount(j.paid) if j.status != "open" else "-", _amount(j.refund),
              " ".join(f"{_short(p.provider, 4)}:{p.outcome or '…'}" for p in j.providers)] for j in rows],
            ["job", "opened (UTC)", "consumer", "status", "escrow", "paid", "refund", "providers"],
        ))


@ledger.command()
@ledger_option
@click.option("--model", "model_hash", default=None, metavar="HASH", help="Only providers of this model (sha256).")
@click.option("--all", "show_all", is_flag=True, help="Include deregistered providers.")
@json_option
def providers(ledger_url: str | None, model_hash: str | None, show_all: bool, as_json: bool) -> None:
    """Providers as last seen on-chain, with their stake and reputation score."""
    with open_ledger(ledger_url) as led:
        rows = led.providers(model_hash=model_hash, registered=None if show_all else True)
        scores = Reputation(led).scores([p.address for p in rows], time.time())
        if as_json:
            echo_json({"providers": [dataclasses.asdict(p) | {"free_stake": p.free_stake,
                                                               "score": round(scores[p.address].score, 6)}
                                     for p in rows]})
            return
        _empty_hint(led)
        click.echo(table(
            [[p.address, _short(p.model_hash, 4), _amount(p.price), _amount(p.stake), _amount(p.free_stake),
              _amount(p.thawing), _amount(p.owed), str(p.jobs), f"{scores[p.address].score:.3f}",
              "yes" if p.registered else "no"] for p in rows],
            ["provider", "model", "price/token", "stake", "free", "thawing", "owed", "jobs", "score", "listed"],
        ))


@ledger.command()
@ledger_option
@click.option("--provider", default=None, metavar="ADDRESS")
@json_option
def earnings(ledger_url: str | None, provider: str | None, as_json: bool) -> None:
    """What each provider earned, withdrew, is owed, and lost to slashes."""
    with open_ledger(ledger_url) as led:
        rows = led.earnings(provider)
        if as_json:
            echo_json({"earnings": [dataclasses.asdict(r) for r in rows]})
            return
        _empty_hint(led)
        body = [[r.provider, str(r.jobs_paid), f"{r.tokens:,}", _amount(r.earned), _amount(r.withdrawn),
                 _amount(r.owed), _amount(r.slashed)] for r in rows]
        if len(rows) > 1:
            body.append(["total", str(sum(r.jobs_paid for r in rows)), f"{sum(r.tokens for r in rows):,}",
                         _amount(sum(r.earned for r in rows)), _amount(sum(r.withdrawn for r in rows)),
                         _amount(sum(r.owed for r in rows)), _amount(sum(r.slashed for r in rows))])
        click.echo(table(body, ["provider", "jobs paid", "tokens", "earned", "withdrawn", "owed", "slashed"]))


@ledger.command()
@ledger_option
@click.option("--provider", default=None, metavar="ADDRESS")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
def slashes(ledger_url: str | None, provider: str | None, limit: int, as_json: bool) -> None:
    """Slashes, newest first: the stake a provider lost for a result the majority disproved."""
    with open_ledger(ledger_url) as led:
        rows = led.slashes(provider=provider, limit=limit)
        if as_json:
            echo_json({"slashes": [dataclasses.asdict(r) for r in rows]})
            return
        _empty_hint(led)
        click.echo(table(
            [[_when(r.block_time), f"{r.block_number:,}", r.provider, _short(r.job_id), _amount(r.amount)] for r in rows],
            ["when (UTC)", "block", "provider", "job", "amount"],
        ))
