"""`mesh serve`: the OpenAI-compatible gateway (consumer/gateway) on this user's account, and
`ask_via_gateway`, which `mesh ask` uses when such a gateway runs.

A running gateway is recorded in $MESH_HOME/gateway.json (URL, process, account, chain, pool); the
record is removed when it stops. This module's top level imports only the standard library and
click: `mesh ask` pays for nothing more when it checks for a gateway.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import click

RECORD = "gateway.json"
#: How long `mesh ask` waits for a recorded gateway to accept a connection before asking directly.
CONNECT_TIMEOUT = 0.5


def _record_path() -> Path:
    from meshmarket.mesh import config

    return config.home() / RECORD


def _amount_option(ctx, param, value):
    if value is None:
        return None
    from meshmarket.mesh.types import parse_amount

    try:
        return parse_amount(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _api_key(key_file: str | None) -> str | None:
    if key_file:
        key = Path(key_file).read_text().strip()
    else:
        key = os.environ.get("MESH_GATEWAY_KEY", "").strip()
    return key or None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs an API key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option("--max-price", type=click.IntRange(1, 2**40 - 1), default=100, show_default=True,
              envvar="MESH_GATEWAY_MAX_PRICE", help="Most a request pays a seat per output token (base units).")
@click.option("--request-cap", default=None, callback=_amount_option, envvar="MESH_GATEWAY_REQUEST_CAP",
              metavar="AMOUNT", help="Refuse requests that could cost more (e.g. 0.5 MESH or 500000u).")
@click.option("--daily-cap", default=None, callback=_amount_option, envvar="MESH_GATEWAY_DAILY_CAP",
              metavar="AMOUNT", help="Refuse requests that could take today's (UTC) spending over this.")
@click.option("--default-max-tokens", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="max_tokens of requests that give none.")
@click.option("--group", default=None, metavar="NAME", help="Serve a private mesh instead of the open market.")
@click.option("--stream", "stream_mode", type=click.Choice(["agreed", "first"]), default="agreed", show_default=True,
              help="Stream text once two seats agree on it, or the first seat's at once.")
@click.option("--min-pool", type=click.IntRange(0, 1000), default=6, show_default=True,
              help="Refuse pools with fewer providers able to sit on a jury (see `mesh ask --help`).")
@click.option("--dispute/--no-dispute", default=False, show_default=True,
              help="Dispute contested jobs by default (requests may ask with meshmarket.dispute).")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding the API key (default: $MESH_GATEWAY_KEY). Never on the command line.")
@click.option("--yes", is_flag=True, help="Approve the registry's allowance without asking, if one is needed.")
@click.option("--account", "account_name", default=None, metavar="ADDRESS|dev:N",
              help="The paying account (default: $MESH_ACCOUNT); its password is asked once, or $MESH_PASSWORD.")
@click.option("--rpc", "rpc", default=None, metavar="URL", help="JSON-RPC URL of the chain.")
def serve(host, port, max_price, request_cap, daily_cap, default_max_tokens, group, stream_mode, min_pool, dispute,
          api_key_file, yes, account_name, rpc) -> None:
    """Serve the market as an OpenAI-compatible API (/v1) and a live explorer page (/)."""
    import logging

    from meshmarket.consumer.gateway.config import GatewayConfig, Limits
    from meshmarket.consumer.gateway.dispatch import DispatchSettings
    from meshmarket.consumer.gateway.serve import check_bind
    from meshmarket.mesh.market import group_id

    config = GatewayConfig(max_price=max_price, request_cap=request_cap, daily_cap=daily_cap,
                           api_key=_api_key(api_key_file), limits=Limits(default_max_tokens=default_max_tokens),
                           dispute=dispute)
    check_bind(host, config.api_key)
    settings = DispatchSettings(group=group_id(group), stream_mode=stream_mode, min_pool=min_pool)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("meshmarket.gateway").setLevel(logging.INFO)
    chain, acct, selector = _open(account_name, rpc, config, yes)
    try:
        _run(chain, acct, selector, config, settings, host, port, account_name, group)
    finally:
        selector.close()


def _open(account_name, rpc, config, yes: bool):
    """The chain, the unlocked account (password asked once) and the ledger, checked for funds."""
    from meshmarket.cli.common import open_chain, resolve_account
    from meshmarket.consumer.selection import Selector

    chain = open_chain(rpc)
    acct = resolve_account(account_name, chain.chain_id)
    _check_funds(chain, acct, config, yes)
    selector = Selector.open(chain, on_warning=lambda m: click.echo(m, err=True))
    return chain, acct, selector


def _check_funds(chain, acct, config, yes: bool) -> None:
    """One request's worst case must be payable (credit first, then allowance and balance)."""
    from meshmarket.mesh.errors import ConfigError
    from meshmarket.mesh.market import MarketClient
    from meshmarket.mesh.types import format_amount

    worst = config.limits.default_max_tokens * config.max_price * (config.max_seats + 1 + int(config.dispute))
    credit = MarketClient(chain).credit(acct.address)
    balance = chain.balance(acct.address)
    if credit + balance < worst:
        raise ConfigError(f"{acct.address} holds {format_amount(balance)} and {format_amount(credit)} of credit; one "
                          f"request may escrow up to {format_amount(worst)}",
                          "get MESH (`mesh token faucet` on the local chain), or lower --max-price/--default-max-tokens")
    if credit + chain.allowance(acct.address, chain.registry.address) >= worst:
        return
    amount = max(worst * 100, config.daily_cap or 0)
    if not yes and not (sys.stdin.isatty() and click.confirm(
            f"The registry needs your approval to take escrow from {acct.address}: approve {format_amount(amount)}?",
            err=True)):
        raise ConfigError("the registry may not take this account's tokens for escrow",
                          f"approve it (`mesh token approve {amount}u`), deposit credit, or pass --yes")
    chain.transact(acct, chain.token.functions.approve(chain.registry.address, amount))


def _run(chain, acct, selector, config, settings, host, port, account_name, group) -> None:
    import trio

    from meshmarket.consumer.gateway.runner import run_gateway
    from meshmarket.mesh import config as mesh_config

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(_watch_signals, stop, n.cancel_scope)

            async def gateway(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
                await run_gateway(chain, acct, config, settings, host=host, port=port, selector=selector,
                                  spending_path=mesh_config.home() / "gateway-spending.json",
                                  shutdown_trigger=stop.wait, task_status=task_status)
                n.cancel_scope.cancel()  # stopped: end the signal watcher too

            urls, app = await n.start(gateway)
            _announce(urls[0], acct, account_name, chain, group, config, await app.backend.models())

    try:
        trio.run(main)
    finally:
        _forget_record()


async def _watch_signals(stop, scope) -> None:
    """The first SIGINT or SIGTERM stops gracefully (streams in flight get 5 s); a second cuts them."""
    import signal

    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if stop.is_set():
                scope.cancel()
                return
            click.echo("stopping (requests in flight get 5 s; Ctrl-C again to cut them)…", err=True)
            stop.set()


def _announce(url, acct, account_name, chain, group, config, models) -> None:
    from meshmarket.mesh.files import write_json

    record = {"url": url, "pid": os.getpid(), "address": acct.address, "account": account_name or
              os.environ.get("MESH_ACCOUNT") or acct.address, "rpc_url": chain.deployment.rpc_url,
              "chain_id": chain.chain_id, "market": chain.deployment.market, "group": group,
              "max_price": config.max_price, "key_required": config.api_key is not None,
              "started_at": int(time.time())}
    write_json(_record_path(), record, mode=0o600)
    click.echo(f"gateway on {url}  (OpenAI base URL: {url}/v1; explorer: {url}/)")
    click.echo(f"paying account {acct.address}; max price {config.max_price} base units/token"
               + (f"; per-request cap {config.request_cap}u" if config.request_cap is not None else "")
               + (f"; daily cap {config.daily_cap}u" if config.daily_cap is not None else ""))
    click.echo("models: " + (", ".join(m["id"] for m in models) or "none yet (providers may still be starting)"))


def _forget_record() -> None:
    path = _record_path()
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


# ------------------------------------------------------------------------------ `mesh ask` through a gateway


def running_gateway(account_name: str | None = None, rpc: str | None = None, group: str | None = None) -> dict | None:
    """The record of a gateway `mesh serve` runs for this user directory, if it is alive, answers
    at once, and serves the account, chain and pool asked for; else None."""
    try:
        record = json.loads(_record_path().read_text())
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    name = account_name or os.environ.get("MESH_ACCOUNT")
    if name and name.lower() not in (str(record.get("account", "")).lower(), str(record.get("address", "")).lower()):
        return None
    if (rpc and rpc.rstrip("/") != str(record.get("rpc_url", "")).rstrip("/")) or group != record.get("group"):
        return None
    if record.get("key_required") and not os.environ.get("MESH_GATEWAY_KEY"):
        return None
    u = urlsplit(record["url"])
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=CONNECT_TIMEOUT)
        conn.connect()
        conn.close()
    except OSError:
        return None
    return record


def ask_via_gateway(prompt: str, *, model: str = "default", system: str | None = None, max_tokens: int = 128,
                    max_price: int = 100, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                    stop: tuple[str, ...] = (), dispute: bool = False, group: str | None = None,
                    account_name: str | None = None, rpc: str | None = None, as_json: bool = False) -> dict | None:
    """`mesh ask` through a running gateway: stream the answer to stdout and print the receipt as
    `mesh ask` does; return the receipt (the `meshmarket` field, with the text). None at once when
    no suitable gateway runs (the caller then asks the market itself). A refusal or failure of the
    gateway raises click.ClickException (exit code 1)."""
    record = running_gateway(account_name, rpc, group)
    if record is None:
        return None
    body = {"model": _model_name(model), "stream": True, "stream_options": {"include_usage": True},
            "messages": ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
            "meshmarket": {"max_price": min(max_price, int(record.get("max_price", max_price))), "dispute": dispute}}
    if stop:
        body["stop"] = list(stop)
    text, receipt = _stream(record, body, echo=not as_json)
    receipt["text"] = text
    if as_json:
        click.echo(json.dumps(receipt, indent=2, sort_keys=True))
    else:
        click.echo()
        _print_receipt(receipt)
    return receipt


def _model_name(model: str) -> str:
    """What the gateway calls the model: 'default', a 0x hash, or the hash of a GGUF file."""
    if model == "default" or (model.startswith("0x") and len(model) == 66) or not Path(model).expanduser().is_file():
        return model
    from meshmarket.provider.modelfile import file_sha256

    return file_sha256(Path(model).expanduser())


def _stream(record: dict, body: dict, echo: bool) -> tuple[str, dict]:
    u = urlsplit(record["url"])
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    if record.get("key_required"):
        headers["authorization"] = "Bearer " + os.environ.get("MESH_GATEWAY_KEY", "")
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(), headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise click.ClickException(_error_text(resp.read(), f"the gateway answered HTTP {resp.status}"))
    pieces: list[str] = []
    receipt: dict = {}
    for line in resp:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:
            if echo and pieces:
                click.echo()
            raise click.ClickException(_error_text(line[6:], "the gateway failed"))
        for choice in event.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                pieces.append(piece)
                if echo:
                    click.echo(piece, nl=False)
                    sys.stdout.flush()
        receipt = event.get("meshmarket") or receipt
    conn.close()
    return "".join(pieces), receipt


def _error_text(raw: bytes, fallback: str) -> str:
    try:
        err = json.loads(raw)["error"]
        job = (err.get("meshmarket") or {}).get("job_id")
        return f"{err['message']} ({err.get('code')})" + (f" [job {job}]" if job else "")
    except (ValueError, KeyError, TypeError):
        return fallback


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(r):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _print_receipt(r: dict) -> None:
    """The receipt as `mesh ask` prints it (cli.consumer.print_receipt), from its JSON form."""
    from meshmarket.mesh.types import format_amount

    fp = f"  build {r['system_fingerprint']}" if r.get("system_fingerprint") else ""
    click.secho(f"\njob {r.get('job_id')}  {r.get('outcome')}  agreement {r.get('agreement')}{fp}  (via {r.get('model')} "
                "at the gateway)", bold=True)
    rows = [[str(s["index"]), s["address"], str(s["price"]), str(s["tokens"]), format_amount(s["paid"]),
             format_amount(s["slashed"]) if s["slashed"] else "-", s.get("build") or "?",
             "-" if s.get("first_token_ms") is None else f"{s['first_token_ms']:.0f}", s.get("status", "")]
            for s in r.get("providers", [])]
    click.echo(_table(rows, ["#", "provider", "price", "tokens", "paid", "slashed", "build", "1st tok ms", "status"]))
    click.echo(f"escrow {format_amount(r['escrow'])}  paid {format_amount(r['paid'])}  refund {format_amount(r['refund'])}"
               + ("" if r.get("settled") else "  (not closed yet: the gateway moves it on)"))
    gas = r.get("gas") or {}
    click.echo(f"gas {sum(gas.values()):,} ({', '.join(f'{k} {v:,}' for k, v in gas.items())})")
    click.echo("time " + ", ".join(f"{k} {v:,.0f} ms" for k, v in (r.get("timings_ms") or {}).items()))
