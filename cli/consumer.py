"""`mesh ask`, `mesh models`, `mesh settle`: pay per query for an answer three providers agree on."""

from __future__ import annotations

import json
import sys

import click
from eth_utils import to_checksum_address

from cli.common import account_option, echo_json, json_option, open_chain, resolve_account, rpc_option, table
from mesh.errors import ConfigError
from mesh.types import format_amount


def _model_hash(model: str) -> bytes:
    """--model: a 0x sha256 of the GGUF file, 'default', or a path to a GGUF file."""
    if model.startswith("0x") and len(model) == 66:
        return bytes.fromhex(model[2:])
    from provider.engine import default_model_path
    from provider.modelfile import file_sha256
    from pathlib import Path

    path = default_model_path() if model == "default" else Path(model).expanduser()
    if not path.is_file():
        raise click.BadParameter(f"{model!r} is neither a 0x model hash, 'default', nor a GGUF file", param_hint="--model")
    return bytes.fromhex(file_sha256(path)[2:])


@click.command()
@click.argument("prompt")
@click.option("--model", default="default", show_default=True, help="Model: 0x sha256 of the GGUF file, a GGUF path, or 'default'.")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=128, show_default=True)
@click.option("--max-price", type=click.IntRange(1, 2**64 - 1), default=100, show_default=True,
              help="Most you pay per output token per provider, in base units.")
@click.option("--system", default=None, help="A system message before the prompt.")
@click.option("--allow", multiple=True, metavar="PEER",
              help="Only these providers (address or peer id): repeat the flag or separate with commas. A private mesh.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 2), default=0, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True)
@click.option("--yes", is_flag=True, help="Approve the token allowance without asking, if one is needed.")
@account_option
@rpc_option
@json_option
def ask(prompt, model, max_tokens, max_price, system, allow, seed, temperature, yes, account_name, rpc, as_json) -> None:
    """Ask the mesh: three providers answer, the contract pays those who agree."""
    from consumer.ask import AskOptions, Asker, discover, eligible, settle_pending

    if not prompt.strip():
        raise click.BadParameter("the prompt is empty", param_hint="PROMPT")
    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    say = (lambda m: click.echo(m, err=True)) if not as_json else (lambda m: None)
    settle_pending(chain, acct, on_event=say)  # recover what an earlier run left open
    model_hash = _model_hash(model)
    allow = [a for item in allow for a in item.split(",") if a.strip()]
    offers = eligible(chain, discover(chain, model_hash), acct.address, max_tokens, max_price, allow)
    need = 3 * max_tokens * max_price
    from consumer.selection import Selector

    selector = Selector.open(chain, on_warning=say)
    asker = Asker(chain, acct, rank=selector.rank, observe=selector.observe, on_event=say)
    missing_balance, missing_allowance = asker.check_funds(need)
    if missing_balance:
        raise ConfigError(f"escrow for this query may need {format_amount(need)}; you are {format_amount(missing_balance)} short",
                          "get MESH (`mesh token faucet` on the local chain) or lower --max-tokens/--max-price")
    if missing_allowance:
        if not yes and not (sys.stdin.isatty() and click.confirm(
                f"The registry (the market's vault) needs your approval to take up to {format_amount(need)} for escrow. Approve?",
                err=True)):
            raise ConfigError("the registry may not take your tokens for escrow",
                              f"approve it: `mesh token approve {need}u`, or pass --yes")
        chain.transact(acct, chain.token.functions.approve(chain.registry.address, need))
    messages = ([("system", system)] if system else []) + [("user", prompt)]
    opts = AskOptions(max_tokens=max_tokens, max_price=max_price, temperature_milli=round(temperature * 1000), seed=seed)

    def stream(text: str) -> None:
        if not as_json:
            click.echo(text, nl=False)
            sys.stdout.flush()

    try:
        receipt = asker.ask(messages, model_hash, offers, opts, on_token=stream)
        if selector.synced:
            selector.sync()  # record this job's outcome for the next selection
    finally:
        selector.close()
    if as_json:
        click.echo(json.dumps(receipt.as_dict(), indent=2))
    else:
        click.echo()
        if receipt.streamed != receipt.text and receipt.agreement in ("3/3", "2/3"):
            click.secho("\n[the streamed answer was not the verified one; the answer the majority signed:]", bold=True)
            click.echo(receipt.text)
        print_receipt(receipt)
    if receipt.agreement == "none":
        raise ConfigError("the three providers all disagreed: nobody was paid and your escrow was refunded",
                          "ask again (other providers are chosen as reputations change), or use --allow with peers you trust")


def print_receipt(r) -> None:
    click.secho(f"\njob 0x{r.job_id.hex()}  agreement {r.agreement}", bold=True)
    rows = []
    for s in r.slots:
        ft = "-" if s.first_token_ms != s.first_token_ms else f"{s.first_token_ms:.0f}"
        note = s.status + (f" (replaced {', '.join(a[:10] + '…' for a in s.replaced)})" if s.replaced else "")
        rows.append([str(s.index), s.provider, str(s.price), str(s.tokens), format_amount(s.paid),
                     format_amount(s.slashed) if s.slashed else "-", ft, note])
    click.echo(table(rows, ["#", "provider", "price", "tokens", "paid", "slashed", "1st tok ms", "status"]))
    gas = sum(r.gas.values())
    click.echo(f"escrow {format_amount(r.escrow)}  paid {format_amount(r.paid)}  refund {format_amount(r.refund)}"
               + ("" if r.settled else "  (settlement pending)"))
    click.echo(f"gas {gas:,} ({', '.join(f'{k} {v:,}' for k, v in r.gas.items())})")
    click.echo("time " + ", ".join(f"{k} {v:,.0f} ms" for k, v in r.timings_ms.items()))


@click.command()
@rpc_option
@json_option
def models(rpc, as_json) -> None:
    """The models on the market, with their providers, prices and reputation."""
    from consumer.ask import discover

    chain = open_chain(rpc)
    by_model = dict.fromkeys(bytes(args["modelHash"]) for args in chain.registrations())
    from consumer.selection import Selector

    selector = Selector.open(chain, on_warning=lambda m: click.echo(m, err=True))
    scores = selector.scores() if selector.synced else {}
    selector.close()
    out = []
    for mh in by_model:
        for o in discover(chain, mh):
            out.append({"model_hash": "0x" + mh.hex(), "provider": o.address, "price": o.price,
                        "free_stake": o.free_stake, "endpoint": o.endpoint,
                        "reputation": scores.get(o.address)})
    if as_json:
        echo_json({"offers": out})
        return
    if not out:
        click.echo("no providers are registered yet: `mesh provider register` starts one")
        return
    rows = [[o["model_hash"][:18] + "…", o["provider"], str(o["price"]), format_amount(o["free_stake"]),
             "-" if o["reputation"] is None else f"{o['reputation']:.2f}"] for o in out]
    click.echo(table(rows, ["model", "provider", "price/token", "free stake", "reputation"]))


@click.command()
@account_option
@rpc_option
@json_option
def settle(account_name, rpc, as_json) -> None:
    """Settle or finalize your unsettled jobs whose deadline has come (after a crash or a failure)."""
    from consumer.ask import settle_pending
    from consumer.journal import Journal

    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    done = settle_pending(chain, acct, on_event=(lambda m: None) if as_json else click.echo)
    left = [p for p in Journal().pending() if p.job.consumer == to_checksum_address(acct.address)]
    if as_json:
        echo_json({"settled": done, "pending": ["0x" + p.job_id.hex() for p in left]})
    elif not done:
        click.echo(f"nothing to settle now; {len(left)} job(s) pending" if left else "nothing pending")
