"""`mesh ask`, `mesh models`, `mesh settle`: pay per query for an answer three providers agree on.

A query's events (consumer/query_events.py) are said here (`describe`): the answer streams to
stdout, what happens to the job goes to stderr, in this CLI's words (`mesh demo` says them the
same way).
"""

from __future__ import annotations

import sys

import click

from meshmarket.cli.common import (
    account_option,
    echo_json,
    json_option,
    open_chain,
    price_callback,
    resolve_account,
    rpc_option,
    table,
)
from meshmarket.consumer import query_events as ev
from meshmarket.mesh.errors import ConfigError, QueryError
from meshmarket.mesh.limits import MAX_SEED, MAX_STOP_CHARS, MAX_STOPS, MAX_TOKENS
from meshmarket.mesh.types import format_amount, format_price, format_when



def settle_line(note) -> str:
    """A consumer.settlement.SettleNote as a line: a job that moves on only later says how."""
    return note.text + ("; `mesh settle` then" if note.kind == "wait" else "")

def _model_hash(model: str) -> bytes:
    """--model: a 0x sha256 of the GGUF file, 'default', or a path to a GGUF file."""
    if model.startswith("0x") and len(model) == 66:
        return bytes.fromhex(model[2:])
    from meshmarket.provider.engine import default_model_path
    from meshmarket.provider.modelfile import file_sha256
    from pathlib import Path

    path = default_model_path() if model == "default" else Path(model).expanduser()
    if not path.is_file():
        raise click.BadParameter(f"{model!r} is neither a 0x model hash, 'default', nor a GGUF file", param_hint="--model")
    return bytes.fromhex(file_sha256(path)[2:])


@click.command()
@click.argument("prompt")
@click.option("--model", default="default", show_default=True, help="Model: 0x sha256 of the GGUF file, a GGUF path, or 'default'.")
@click.option("--max-tokens", type=click.IntRange(1, MAX_TOKENS), default=128, show_default=True)
@click.option("--max-price", default="100", callback=price_callback, show_default=True, metavar="PRICE",
              help="Most you pay per output token per seat, in MESH per 1M tokens (= base units per token): "
                   "100, 100u or 0.0001/token.")
@click.option("--system", default=None, help="A system message before the prompt.")
@click.option("--group", default=None, metavar="NAME",
              help="Ask a private mesh (the providers that joined group NAME) instead of the open market.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True)
@click.option("--top-p", type=click.FloatRange(0.001, 1), default=1.0, show_default=True)
@click.option("--stop", multiple=True, metavar="TEXT", help=f"End the answer before TEXT (up to {MAX_STOPS}).")
@click.option("--min-pool", type=click.IntRange(0, 1000), default=6, show_default=True,
              help="Refuse a pool with fewer providers able to sit on a jury (two colluding seats could not be "
                   "judged); 0 if you trust every provider of a small pool.")
@click.option("--dispute/--no-dispute", default=False, show_default=True,
              help="If the seats disagree, ask a jury to judge them (costs a jury fee; see docs/PROTOCOL.md).")
@click.option("--yes", is_flag=True, help="Approve the token allowance without asking, if one is needed.")
@account_option
@rpc_option
@json_option
def ask(prompt, model, max_tokens, max_price, system, group, seed, temperature, top_p, stop, min_pool, dispute, yes,
        account_name, rpc, as_json) -> None:
    """Ask the mesh: three providers drawn by the protocol answer; agreeing work is paid."""
    from meshmarket.consumer.ask import AskOptions, Asker, discover, settle_pending
    from meshmarket.consumer.selection import Selector
    from meshmarket.mesh.market import group_id

    if not prompt.strip():
        raise click.BadParameter("the prompt is empty", param_hint="PROMPT")
    if len(stop) > MAX_STOPS or any(not t or len(t) > MAX_STOP_CHARS for t in stop):
        raise click.BadParameter(f"give at most {MAX_STOPS} non-empty stop strings of at most {MAX_STOP_CHARS} characters",
                                 param_hint="--stop")
    from meshmarket.cli.gateway import ask_via_gateway

    if ask_via_gateway(prompt, model=model, system=system, max_tokens=max_tokens, max_price=max_price,
                       temperature=temperature, top_p=top_p, seed=seed, stop=tuple(stop), dispute=dispute,
                       group=group, account_name=account_name, rpc=rpc, as_json=as_json) is not None:
        return  # a running gateway (`mesh serve`) answered, with its warm node and cache
    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    out = _Stream(quiet=as_json)
    say = out.status
    settle_pending(chain, acct, on_event=lambda n: say(settle_line(n)))  # move on what an earlier run left open
    model_hash = _model_hash(model)
    opts = AskOptions(max_tokens=max_tokens, max_price=max_price, temperature_milli=round(temperature * 1000),
                      top_p_milli=round(top_p * 1000), seed=seed, stop=tuple(stop), group=group_id(group),
                      dispute=dispute, min_pool=min_pool)
    offers = discover(chain, model_hash, opts.group)
    selector = Selector.open(chain, on_warning=say, consumer=acct.address)
    asker = Asker(chain, acct, observe=selector.observe)
    _approve_escrow(chain, acct, asker, opts, yes)
    messages = ([("system", system)] if system else []) + [("user", prompt)]

    before = {p.job_id for p in asker.journal.pending()}
    try:
        receipt = asker.ask(messages, model_hash, offers, opts, sink=out.event)
        if selector.synced:
            selector.sync()  # record this job's outcome for the next query
    except KeyboardInterrupt:
        out.end()
        opened = [p for p in asker.journal.pending() if p.job_id not in before]
        click.echo("interrupted" + (f": job 0x{opened[0].job_id.hex()} stays open on-chain and in your journal; "
                                    "seats that delivered are paid and the rest of the escrow returns to your credit "
                                    "when it settles: run `mesh settle` (it says when)" if opened else
                                    ": no job was opened, nothing was spent"), err=True)
        raise SystemExit(130) from None
    finally:
        selector.close()
    if as_json:
        echo_json(receipt.as_dict())
    else:
        out.end()
        if receipt.streamed != receipt.text and receipt.text:
            click.secho("\n[the streamed answer is not the one the results support; that one is:]", bold=True)
            click.echo(receipt.text)
        print_receipt(receipt)
    if receipt.outcome == "refunded":
        raise QueryError("no seat returned a valid result: nobody was paid and your escrow was refunded",
                         "ask again: other seats are drawn")


class _Stream:
    """The answer on stdout as it streams; status lines on stderr, each on a line of its own even
    when they come mid-answer."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.open_line = False

    def event(self, event: ev.QueryEvent) -> None:
        if isinstance(event, ev.SeatToken):
            if event.streamed:
                self.token(event.text)
            return
        line = describe(event)
        if line is not None:
            self.status(line)

    def token(self, text: str) -> None:
        if not self.quiet and text:
            click.echo(text, nl=False)
            sys.stdout.flush()
            self.open_line = not text.endswith("\n")

    def status(self, message: str) -> None:
        if self.quiet:
            return
        if self.open_line:
            click.echo()
            self.open_line = False
        click.echo(message, err=True)

    def end(self) -> None:
        if self.open_line:
            click.echo()
            self.open_line = False


def _seat(provider: str) -> str:
    return provider[:10] + "…"


def describe(event: ev.QueryEvent) -> str | None:
    """A status line for a query's event (None: nothing to say; tokens are the answer itself)."""
    match event:
        case ev.Drawn(job_id, seats, escrow):
            return f"job 0x{job_id.hex()} drawn: seats {', '.join(map(_seat, seats[:3]))}; escrow {format_amount(escrow)}"
        case ev.ManifestRejected(provider, why):
            return f"manifest of {_seat(provider)} rejected: {why}; its build counts as unknown"
        case ev.SeatRefused(seat, _, error):
            return f"seat #{seat} refused the request: {error.message}"
        case ev.SeatFailed(seat, provider, error):
            return f"seat #{seat} {_seat(provider)} failed: {error.message}"
        case ev.SeatAdded(seat, provider):
            return f"seat #{seat} added: {_seat(provider)}"
        case ev.SeatNotAdded(error):
            return f"cannot add a seat: {error.message}"
        case ev.Contested(_, window):
            return (f"the seats disagree: the job is contested; unless a party disputes within {window} s, the "
                    "provisional outcome stands (`mesh settle` closes it then)")
        case ev.Disputed(_, bond, court_time):
            return (f"disputed (bond {format_amount(bond)}): a jury drawn from the pool judges every seat; "
                    f"`mesh settle` closes the job after the court's phases ({court_time} s)")
        case ev.DisputeTooSmall(_, fee, least):
            return (f"a job this small (jury fee {fee} base units, under {least}) cannot be disputed: the provisional "
                    "outcome will stand")
        case ev.Pending(_, missing, deadline, now):
            return (f"{len(missing)} seat(s) did not answer: the job settles after their claim window, "
                    f"{format_when(deadline, now)}; run `mesh settle` then (any later `mesh ask` does it too)")
        case ev.SettleFailed(_, error):
            return (f"settling failed ({error.message}); the job and its results are in the journal: run `mesh settle` "
                    "to retry")
    return None  # tokens, deliveries and settlements: the answer and the receipt say them


def _approve_escrow(chain, acct, asker, opts, yes: bool) -> None:
    """Check the wallet (after credit) covers the escrow: three seats and a jury reserve of at most
    max_tokens x max_price each. Approve the registry for that plus what the job may add (two seats
    if some fail, a dispute's bond), asking first unless --yes."""
    share = opts.max_tokens * opts.max_price
    escrow, most = share * 4, share * (opts.max_seats + 1 + (1 if opts.dispute else 0))
    short = asker.check_funds(escrow)[0]
    if short:
        raise ConfigError(f"this query escrows {format_amount(escrow)} (three seats and a jury reserve of "
                          f"{opts.max_tokens} tokens x {format_price(opts.max_price)} each); you are "
                          f"{format_amount(short)} short",
                          "get MESH (`mesh token faucet` on the local chain) or lower --max-tokens/--max-price")
    if not asker.check_funds(most)[1]:
        return
    if not yes and not (sys.stdin.isatty() and click.confirm(
            f"The registry (the market's vault) needs your approval to take up to {format_amount(most)}: the "
            f"escrow {format_amount(escrow)}, more only if failing seats are replaced"
            f"{' or you dispute' if opts.dispute else ''}; whatever is not earned is refunded to your credit. Approve?",
            err=True)):
        raise ConfigError("the registry may not take your tokens for escrow",
                          f"approve it: `mesh token approve {most}u`, or pass --yes")
    chain.transact(acct, chain.token.functions.approve(chain.registry.address, most))


def print_receipt(r) -> None:
    fp = f"  build {r.system_fingerprint}" if r.system_fingerprint else ""
    cut = "  finish: length (cut at --max-tokens)" if r.finish_reason == "length" else ""
    click.secho(f"\njob 0x{r.job_id.hex()}  {r.outcome}  agreement {r.agreement}{fp}{cut}", bold=True)
    rows = []
    for s in r.slots:
        ft = "-" if s.first_token_ms != s.first_token_ms else f"{s.first_token_ms:.0f}"
        rows.append([str(s.index), s.provider, format_price(s.price), str(s.tokens), format_amount(s.paid),
                     format_amount(s.slashed) if s.slashed else "-", r.builds.get(s.provider) or "?", ft, s.status])
    click.echo(table(rows, ["#", "provider", "price", "tokens", "paid", "slashed", "build", "1st tok ms", "status"]))
    gas = sum(r.gas.values())
    click.echo(f"escrow {format_amount(r.escrow)}  paid {format_amount(r.paid)}  refund {format_amount(r.refund)}"
               + ("" if r.settled else "  (not closed yet: `mesh settle` moves it on)"))
    click.echo(f"gas {gas:,} ({', '.join(f'{k} {v:,}' for k, v in r.gas.items())})")
    click.echo("time " + ", ".join(f"{k} {v:,.0f} ms" for k, v in r.timings_ms.items()))


@click.command()
@account_option
@rpc_option
@json_option
def settle(account_name, rpc, as_json) -> None:
    """Move on your jobs that did not close at once (a seat missing, a contest, a dispute, a crash)."""
    from meshmarket.consumer.ask import settle_pending
    from meshmarket.consumer.journal import Journal

    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    done = settle_pending(chain, acct, on_event=(lambda n: None) if as_json else lambda n: click.echo(settle_line(n)))
    left = [p for p in Journal().pending() if p.job is not None and p.job.consumer == acct.address]
    if as_json:
        echo_json({"jobs": done, "pending": ["0x" + p.job_id.hex() for p in left]})
    elif not done:
        click.echo("nothing pending")
