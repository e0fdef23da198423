"""Who can serve a model: the registry's ProviderRegistered events (each names the provider's
libp2p endpoint) checked against the current on-chain listings, and the offers the contract would
accept for a job (price under the cap, enough free stake), with sentences when there are too few.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_utils import to_checksum_address

from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import TooFewProviders
from meshmarket.mesh.events import registrations
from meshmarket.mesh.market import MarketClient
from meshmarket.mesh.types import format_price


@dataclass(frozen=True)
class Offer:
    """A provider's current on-chain offer for a model, in a pool (group 0: the open market)."""

    address: str
    price: int
    endpoint: str
    manifest_hash: bytes
    free_stake: int
    group: bytes = b"\x00" * 32

    @property
    def peer_id(self) -> str:
        return self.endpoint.rsplit("/p2p/", 1)[-1]

    @property
    def addrs(self) -> list[str]:
        return [self.endpoint.rsplit("/p2p/", 1)[0]]


def discover(chain: Chain, model_hash: bytes, group: bytes | None = None) -> list[Offer]:
    """Current offers for `model_hash` (in `group` if given): the last ProviderRegistered event of
    each provider that is still its listing on-chain (a later registration elsewhere, or a
    deregistration, wins)."""
    latest = {to_checksum_address(args["provider"]): args for args in registrations(chain, model_hash)}
    offers = []
    mc = MarketClient(chain)
    for address, args in latest.items():
        acct = mc.account(address)
        if (bytes(acct["model_hash"]) != model_hash or bytes(acct["manifest_hash"]) != bytes(args["manifestHash"])
                or bytes(acct["group"]) != bytes(args["group"]) or not acct["listed"]):
            continue  # re-registered since, or deregistered
        if group is not None and bytes(acct["group"]) != group:
            continue
        if "/p2p/" not in args["endpoint"]:
            continue
        offers.append(Offer(address, acct["price"], args["endpoint"], bytes(acct["manifest_hash"]),
                            acct["stake"] - acct["locked"], bytes(acct["group"])))
    return offers


def eligible(chain: Chain, offers: Sequence[Offer], consumer: str, max_tokens: int, max_price: int) -> list[Offer]:
    """The offers a draw for this job could pick (at or under the price cap, with free stake for
    the seat's lock times maxLockShare, not the consumer), with a sentence when there are fewer
    than three: checked before the job is opened, so a query that cannot be drawn costs nothing."""
    pool = [o for o in offers if o.address != to_checksum_address(consumer)]
    if len(pool) < 3:
        raise TooFewProviders(f"only {len(pool)} provider(s) offer this model in this pool; a verified query needs three")
    affordable = [o for o in pool if o.price <= max_price]
    if len(affordable) < 3:
        prices = sorted(o.price for o in pool)
        raise TooFewProviders(f"only {len(affordable)} provider(s) charge at most {format_price(max_price)} "
                              f"(prices: {', '.join(map(format_price, prices))})", code="price_cap_too_low",
                              needed_price=prices[2])
    params = chain.deployment.params
    staked = [o for o in affordable if params.lock_for(max_tokens, o.price) * params.max_lock_share <= o.free_stake]
    if len(staked) < 3:
        raise TooFewProviders(f"only {len(staked)} affordable provider(s) have enough free stake for {max_tokens} "
                              "tokens", code="not_enough_stake")
    return staked


def check_jury(chain: Chain, offers: Sequence[Offer], consumer: str, min_pool: int,
               fallback: Sequence[Offer] = ()) -> None:
    """Refuse a pool that could not seat a jury besides a job's three seats: there, two colluding
    seats outvote the third and no dispute can judge them (attack A21, docs/THREAT_MODEL.md). A
    provider counts if a draw would find it (free stake of at least a quarter of the weight cap);
    for a private mesh, whose jury falls back on the model's open market, `fallback` are the open
    market's offers. `min_pool` 0 turns the check off (a test market, knowingly)."""
    if min_pool <= 0:
        return
    me = to_checksum_address(consumer)
    floor = chain.deployment.params.weight_cap // 4
    judges = {o.address for o in [*offers, *fallback] if o.address != me and o.free_stake >= floor}
    own = {o.address for o in offers if o.address != me and o.free_stake >= floor}
    if len(judges) < min_pool or (fallback and len(own) < 3):
        raise TooFewProviders(f"this pool has {len(judges)} provider(s) able to sit on a jury; with fewer than "
                              f"{min_pool}, two colluding seats could never be judged", code="pool_cannot_seat_jury",
                              limit=min_pool)
