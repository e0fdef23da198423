"""`mesh market join|show` and `mesh models`: the market this user directory talks to.

A market is three contracts on one chain. `mesh contracts deploy` creates one; `mesh market join
RPC_URL` records an existing one (a second machine joining the first's chain): it finds the market
among the chain's recent contract creations (local chain only, bounded) or takes `--market ADDRESS`,
and checks it before recording it: the code of market, registry and token is this version's (up to
their immutables), registry and market are bound to each other, the token has 6 decimals, and the
market's EIP-712 domain names this chain. The record (mesh.config.Deployment, with the RPC URL it
was joined at) is where every command finds it.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from functools import cache

import click
from eth_utils import is_address, to_checksum_address

from meshmarket.cli.common import echo_json, json_option, rpc_option, table
from meshmarket.mesh import config
from meshmarket.mesh.chain import connect, load_artifact
from meshmarket.mesh.config import Deployment, MarketParams
from meshmarket.mesh.errors import ChainError, ConfigError, NotDeployed, WrongChain
from meshmarket.mesh.types import format_amount, format_price

#: Blocks scanned for a market's creation when no address is given: a few seconds of batched reads
#: on a local chain. Beyond MAX_SCAN the address must be given.
SCAN_BLOCKS = 10_000
MAX_SCAN = 200_000
#: Blocks fetched per JSON-RPC batch.
BATCH = 200
#: The market's EIP-712 domain (mesh.market.result_domain): name and protocol version.
DOMAIN_NAME, DOMAIN_VERSION = "Meshmarket", "2"
#: Seconds to wait for a provider's manifest in `mesh models` (providers are dialled concurrently).
PROBE_TIMEOUT = 5.0


# ------------------------------------------------------------------------------ records

def deployment_json(dep: Deployment) -> dict:
    return asdict(dep)


def describe(dep: Deployment) -> str:
    p = dep.params
    return "\n".join([
        f"chain id      {dep.chain_id}  ({dep.rpc_url})",
        f"token         {dep.token}  (MESH, 6 decimals)",
        f"registry      {dep.registry}  (stake, escrow and earnings vault)",
        f"market        {dep.market}",
        f"block         {dep.block}  (registry from block {dep.start_block})",
        f"stake         job lock at least {format_amount(p.min_job_lock)}, collateral x{p.collateral_ratio}, "
        f"draw weight capped at {format_amount(p.weight_cap)}, thaw {p.thaw_period} s",
        f"windows       delivery {p.delivery_window} s, claim {p.claim_window} s, reveal {p.reveal_window} s, "
        f"dispute {p.dispute_window} s, court phase {p.court_phase} s, jury {p.jury_size} "
        f"(jury fee at least {p.min_jury_fee} base units)",
    ])


# ------------------------------------------------------------------------------ checking a market

@cache
def _runtime_code(name: str) -> bytes:
    return bytes.fromhex(load_artifact(name)["deployedBytecode"].removeprefix("0x"))


def code_matches(code: bytes, name: str) -> bool:
    """The deployed code is the artifact's, up to its immutables (which the artifact leaves zero)."""
    art = _runtime_code(name)
    return len(code) == len(art) and all(a == 0 for c, a in zip(code, art) if c != a)


def _contract(w3, address: str, name: str):
    return w3.eth.contract(address=to_checksum_address(address), abi=load_artifact(name)["abi"])


def _require_code(w3, address: str, name: str, what: str) -> None:
    code = bytes(w3.eth.get_code(to_checksum_address(address)))
    if not code:
        raise NotDeployed(f"there is no contract at {address} on this chain (the {what})",
                          "check the address: the market's operator prints it with `mesh market show`")
    if not code_matches(code, name):
        raise NotDeployed(f"the contract at {address} is not a {what} of this Meshmarket version "
                          f"(its code is not contracts/build/{name}.json)",
                          "check the address, or use the Meshmarket version the market runs")


def _params(registry, market) -> MarketParams:
    r, m = registry.functions, market.functions
    return MarketParams(
        thaw_period=r.thawPeriod().call(), min_job_lock=r.minJobLock().call(),
        collateral_ratio=r.collateralRatio().call(), weight_cap=r.weightCap().call(),
        max_lock_share=r.maxLockShare().call(), delivery_window=m.deliveryWindow().call(),
        claim_window=m.claimWindow().call(), reveal_window=m.revealWindow().call(),
        dispute_window=m.disputeWindow().call(), court_phase=m.courtPhase().call(), jury_size=m.jurySize().call(),
        min_jury_fee=m.minJuryFee().call())


def _creation_block(w3, address: str, latest: int) -> int:
    """The first block with code at `address` (binary search over historical state)."""
    lo, hi = 0, latest
    try:
        while lo < hi:
            mid = (lo + hi) // 2
            if bytes(w3.eth.get_code(address, mid)):
                hi = mid
            else:
                lo = mid + 1
    except Exception as exc:  # a pruned node refuses old state; web3 raises several types for it
        raise ChainError(f"the node cannot read old state to find when {address} was created ({exc})",
                         "join through a node that keeps the chain's state (an archive node, or the local Anvil)") from exc
    return lo


def _creator(w3, block: int, address: str) -> str:
    """Who sent the transaction that created `address` in `block` ("" if a contract created it)."""
    from meshmarket.contracts.deploy import get_create_address

    for tx in w3.eth.get_block(block, full_transactions=True)["transactions"]:
        if tx.get("to") is None and get_create_address(tx["from"], tx["nonce"]) == address:
            return to_checksum_address(tx["from"])
    return ""


def inspect_market(w3, rpc_url: str, market: str, chain_id: int | None = None) -> Deployment:
    """Check the market at `market` and its registry and token; the Deployment to record."""
    actual = w3.eth.chain_id
    if chain_id is not None and actual != chain_id:
        raise WrongChain(f"the node at {rpc_url} is chain {actual}, not chain {chain_id}",
                         "check the RPC URL, or drop --chain-id")
    market = to_checksum_address(market)
    _require_code(w3, market, "JobMarket", "market (JobMarket)")
    m = _contract(w3, market, "JobMarket")
    registry = to_checksum_address(m.functions.registry().call())
    _require_code(w3, registry, "ProviderRegistry", "registry (ProviderRegistry)")
    r = _contract(w3, registry, "ProviderRegistry")
    bound = to_checksum_address(r.functions.market().call())
    if bound != market:
        raise NotDeployed(f"the registry {registry} belongs to another market ({bound}), not to {market}",
                          "join the market the registry names, or check the address")
    token = to_checksum_address(r.functions.token().call())
    try:
        decimals = _contract(w3, token, "MeshToken").functions.decimals().call()
    except Exception as exc:  # no contract, or not an ERC-20: web3 raises several types
        raise NotDeployed(f"the registry's token {token} does not answer as an ERC-20 ({exc})",
                          "this is not a Meshmarket market") from exc
    if decimals != 6:
        raise NotDeployed(f"the registry's token {token} has {decimals} decimals; Meshmarket amounts assume 6",
                          "this is not a Meshmarket market")
    _fields, name, version, domain_chain, verifying, *_ = m.functions.eip712Domain().call()
    if (name, version) != (DOMAIN_NAME, DOMAIN_VERSION):
        raise NotDeployed(f"the market at {market} signs results as {name!r} version {version!r}, this Meshmarket "
                          f"as {DOMAIN_NAME!r} version {DOMAIN_VERSION!r}", "use the Meshmarket version the market runs")
    if domain_chain != actual or to_checksum_address(verifying) != market:
        raise WrongChain(f"the market's signing domain names chain {domain_chain} and {verifying}, the node is "
                         f"chain {actual}", "join through a node of the chain the market was deployed on")
    latest = w3.eth.block_number
    block = _creation_block(w3, market, latest)
    start = _creation_block(w3, registry, block)
    return Deployment(chain_id=actual, rpc_url=rpc_url, token=token, registry=registry, market=market, block=block,
                      block_hash=w3.eth.get_block(block)["hash"].to_0x_hex(), deployer=_creator(w3, block, market),
                      params=_params(r, m), start_block=start)


def scan_markets(w3, depth: int) -> tuple[list[tuple[str, int]], int, int]:
    """Markets (address, creation block) created in the last `depth` blocks, newest first; with
    the first and last block scanned. Contract creations are read in JSON-RPC batches; a created
    contract is a market when its code is JobMarket's."""
    from meshmarket.contracts.deploy import get_create_address

    latest = w3.eth.block_number
    first = max(0, latest - depth + 1)
    created: list[tuple[str, int]] = []
    for top in range(latest, first - 1, -BATCH):
        numbers = range(top, max(first, top - BATCH + 1) - 1, -1)
        for block in _batch(w3, [("eth_getBlockByNumber", [hex(n), True]) for n in numbers]):
            for tx in block["transactions"] if block else ():
                if tx.get("to") is None:
                    created.append((get_create_address(tx["from"], int(tx["nonce"], 16)), int(block["number"], 16)))
    markets = []
    for i in range(0, len(created), BATCH):
        chunk = created[i:i + BATCH]
        codes = _batch(w3, [("eth_getCode", [a, "latest"]) for a, _ in chunk])
        markets += [(a, b) for (a, b), code in zip(chunk, codes) if code_matches(bytes.fromhex(code[2:]), "JobMarket")]
    return markets, first, latest


def _batch(w3, calls: list) -> list:
    replies = w3.provider.make_batch_request(calls)
    errors = [replies] if not isinstance(replies, list) else [r for r in replies if "error" in r]
    if errors:
        raise ChainError(f"the node refused a batch of {len(calls)} reads ({errors[0].get('error')})",
                         "join with --market ADDRESS instead of scanning")
    return [r["result"] for r in replies]


def find_market(w3, rpc_url: str, depth: int) -> str:
    """The one market created in the last `depth` blocks of the local chain, or a sentence."""
    chain_id = w3.eth.chain_id
    if chain_id != config.ANVIL_CHAIN_ID:
        raise ConfigError(f"chain {chain_id} is not a local chain: anyone can create contracts that look like a "
                          "market there, so it is not searched", "pass --market ADDRESS (from the market's operator)")
    markets, first, latest = scan_markets(w3, depth)
    if len(markets) == 1:
        return markets[0][0]
    if markets:
        listed = ", ".join(f"{a} (block {b})" for a, b in markets)
        raise ConfigError(f"{len(markets)} markets were created on {rpc_url}: {listed}",
                          "choose one with --market ADDRESS (its operator's `mesh market show` prints it)")
    if first > 0:
        raise ConfigError(f"no market was created in the last {depth:,} blocks of {rpc_url} (blocks {first:,} to "
                          f"{latest:,}); older ones are not searched",
                          "pass --market ADDRESS (its operator's `mesh market show` prints it)"
                          + (f", or --scan up to {MAX_SCAN:,}" if depth < MAX_SCAN else ""))
    raise NotDeployed(f"no market has been deployed on {rpc_url} (all {latest + 1:,} blocks searched)",
                      "deploy one there with `mesh contracts deploy --rpc URL`, or check the URL")


# ------------------------------------------------------------------------------ commands

@click.group()
def market() -> None:
    """The market this user directory talks to: join an existing one, show the recorded one."""


@market.command()
@click.argument("rpc_url")
@click.option("--market", "market_address", default=None, metavar="ADDRESS",
              help="The market (JobMarket) address. Default: search the local chain's recent contract creations.")
@click.option("--chain-id", type=int, default=None, help="Refuse unless the node is this chain.")
@click.option("--scan", "depth", type=click.IntRange(1, MAX_SCAN), default=SCAN_BLOCKS, show_default=True,
              metavar="BLOCKS", help="How many recent blocks to search for the market when no --market is given.")
@json_option
def join(rpc_url: str, market_address: str | None, chain_id: int | None, depth: int, as_json: bool) -> None:
    """Join the market on the chain at RPC_URL: find or take its contracts, check them, record them."""
    if market_address is not None and not is_address(market_address):
        raise click.BadParameter(f"{market_address!r} is not an address", param_hint="--market")
    w3 = connect(rpc_url)
    address = market_address or find_market(w3, rpc_url, depth)
    dep = inspect_market(w3, rpc_url, address, chain_id)
    path = Deployment.default_path()
    replaced = None
    if path.exists():
        try:
            old = Deployment.load(path)
            replaced = None if (old.chain_id, old.market) == (dep.chain_id, dep.market) else old
        except ConfigError:
            pass
        if replaced is not None:
            path.replace(path.with_name(path.name + ".previous"))
    dep.save()
    if as_json:
        echo_json({**deployment_json(dep), "path": str(path),
                   "replaced": None if replaced is None else {"chain_id": replaced.chain_id, "market": replaced.market,
                                                              "kept_at": str(path) + ".previous"}})
        return
    click.echo(describe(dep))
    click.echo(f"recorded in   {path}")
    if replaced is not None:
        click.echo(f"(the market recorded before, {replaced.market} on chain {replaced.chain_id}, is kept in "
                   f"{path}.previous)", err=True)
    if dep.chain_id == config.ANVIL_CHAIN_ID:
        click.echo("a local chain: `mesh token faucet ADDRESS` gives an account MESH and ETH for gas", err=True)


@market.command()
@rpc_option
@json_option
def show(rpc: str | None, as_json: bool) -> None:
    """The recorded market, and whether its chain answers with the contracts in place."""
    from meshmarket.mesh.chain import Chain

    dep = Deployment.load()
    url = config.rpc_url(rpc)
    try:
        chain = Chain.open(dep, url)
        status = {"reachable": True, "block": chain.w3.eth.block_number, "error": None}
    except ChainError as exc:
        status = {"reachable": False, "block": None, "error": str(exc)}
    if as_json:
        echo_json({**deployment_json(dep), "path": str(Deployment.default_path()), "rpc": url, **status})
        return
    click.echo(describe(dep))
    click.echo(f"recorded in   {Deployment.default_path()}")
    click.echo(f"now           {url}: " + (f"block {status['block']:,}" if status["reachable"] else status["error"]))


# ------------------------------------------------------------------------------ models and manifests

def probe(offers, timeout: float = PROBE_TIMEOUT) -> dict[str, dict]:
    """Fetch each offer's manifest as a consumer does and check it the same way (its hash is the
    registered manifest hash, it is the registered model, its signer is the registered provider and
    the peer Noise authenticated), all at once. `offers`: (Offer, model hash) pairs. address ->
    {"status": "ok" | "unreachable" | "rejected", "reason", "manifest"}."""
    import trio

    from meshmarket.consumer.client import fetch_manifest
    from meshmarket.mesh.errors import ProviderFailed
    from meshmarket.mesh.p2p import Node, address_from_peer_id

    out: dict[str, dict] = {}

    async def one(node, o, model_hash: bytes) -> None:
        try:
            if address_from_peer_id(o.peer_id) != o.address:
                raise ProviderFailed("bad_manifest", f"its registered endpoint's peer id {o.peer_id} is not its address")
            m, digest = await fetch_manifest(node, o.peer_id, o.addrs, timeout)
        except ProviderFailed as exc:
            status = "unreachable" if exc.code == "unreachable" else "rejected"
            out[o.address] = {"status": status, "reason": str(exc), "manifest": None}
            return
        reason = None
        if digest != o.manifest_hash:
            reason = (f"it serves a manifest (hash 0x{digest.hex()[:12]}…) that is not the one it registered "
                      f"(0x{o.manifest_hash.hex()[:12]}…): it was registered again elsewhere; its operator must run "
                      "`mesh provider register` again and restart it")
        elif m.model_sha256 != "0x" + model_hash.hex():
            reason = f"its manifest describes another model file ({m.model_sha256})"
        out[o.address] = {"status": "rejected" if reason else "ok", "reason": reason, "manifest": None if reason else m}

    async def run() -> None:
        async with Node.start(os.urandom(32)) as node:  # a throwaway identity: it only reads
            async with trio.open_nursery() as n:
                for o, model_hash in offers:
                    n.start_soon(one, node, o, model_hash)

    trio.run(run)
    return out


def _model_row(mh: bytes, offers: list, probes: dict, scores: dict) -> dict:
    accepted = [probes[o.address]["manifest"] for o in offers if probes.get(o.address, {}).get("manifest")]
    m = accepted[0] if accepted else None
    return {"model_hash": "0x" + mh.hex(), "name": m.model_id if m else None,
            "quantization": m.quantization if m else None,
            "context_length": min(x.context_length for x in accepted) if accepted else None,
            "offers": [{"model_hash": "0x" + mh.hex(), "model_name": m.model_id if m else None, "provider": o.address,
                        "price": o.price, "group": None if not any(o.group) else "0x" + o.group.hex(),
                        "free_stake": o.free_stake, "endpoint": o.endpoint, "reputation": scores.get(o.address),
                        "manifest": probes.get(o.address, {}).get("status", "not checked"),
                        "manifest_problem": probes.get(o.address, {}).get("reason")} for o in offers]}


def _print_models(rows: list[dict]) -> None:
    for row in rows:
        name = f"{row['name']} ({row['quantization']}, ctx {row['context_length']})" if row["name"] else \
            "name unknown (no provider's manifest could be read)"
        click.echo(f"\n{name}\n  --model {row['model_hash']}")
        lines = [["open" if o["group"] is None else o["group"][:12] + "…", o["provider"], format_price(o["price"]),
                  format_amount(o["free_stake"]), "-" if o["reputation"] is None else f"{o['reputation']:.2f}",
                  o["manifest"]] for o in row["offers"]]
        click.echo(table(lines, ["pool", "provider", "price", "free stake", "reputation", "manifest"]))
        for o in row["offers"]:
            if o["manifest_problem"]:
                click.echo(f"  {o['provider']}: {o['manifest']}: {o['manifest_problem']}")


@click.command()
@click.option("--no-dial", is_flag=True, help="Do not fetch the providers' manifests (names stay unknown).")
@rpc_option
@json_option
def models(no_dial: bool, rpc: str | None, as_json: bool) -> None:
    """The models on the market: name, the hash --model takes, providers, prices, reputation, and
    whether each provider's manifest passes the checks a query makes."""
    from meshmarket.cli.common import open_chain
    from meshmarket.consumer.discovery import discover
    from meshmarket.consumer.selection import Selector
    from meshmarket.mesh.events import registrations

    chain = open_chain(rpc)
    hashes = dict.fromkeys(bytes(args["modelHash"]) for args in registrations(chain))
    selector = Selector.open(chain, on_warning=lambda msg: click.echo(msg, err=True))
    scores = selector.scores() if selector.synced else {}
    selector.close()
    by_model = {mh: offers for mh in hashes if (offers := discover(chain, mh))}
    probes = {} if no_dial or not by_model else probe([(o, mh) for mh, offers in by_model.items() for o in offers])
    rows = [_model_row(mh, offers, probes, scores) for mh, offers in by_model.items()]
    if as_json:
        echo_json({"models": rows, "offers": [o for r in rows for o in r["offers"]]})
    elif not rows:
        click.echo("no providers are registered yet: `mesh provider register` starts one")
    else:
        _print_models(rows)
