"""Who can serve a model: the registry's ProviderRegistered events (each names the provider's
libp2p endpoint) checked against the current on-chain listings, and the offers the contract would
accept for a job (price under the cap, enough free stake), with sentences when there are too few.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_utils import to_checksum_address

from mesh.chain import Chain
from mesh.errors import QueryError
from mesh.market import MarketClient


@dataclass(frozen=True)
class Offer:
    """A provider's current on-chain offer for a model."""

    address: str
    price: int
    endpoint: str
    manifest_hash: bytes
    free_stake: int

    @property
    def peer_id(self) -> str:
        return self.endpoint.rsplit("/p2p/", 1)[-1]

    @property
    def addrs(self) -> list[str]:
        return [self.endpoint.rsplit("/p2p/", 1)[0]]


def discover(chain: Chain, model_hash: bytes) -> list[Offer]:
    """Current offers for `model_hash`: the last ProviderRegistered event of each provider that is
    still its listing on-chain (a later registration for another model or a deregistration wins)."""
    latest = {to_checksum_address(args["provider"]): args for args in chain.registrations(model_hash)}
    offers = []
    mc = MarketClient(chain)
    for address, args in latest.items():
        acct = mc.account(address)
        if bytes(acct["model_hash"]) != model_hash or bytes(acct["manifest_hash"]) != bytes(args["manifestHash"]):
            continue  # re-registered since, or deregistered
        if "/p2p/" not in args["endpoint"]:
            continue
        offers.append(Offer(address, acct["price"], args["endpoint"], bytes(acct["manifest_hash"]),
                            acct["stake"] - acct["locked"]))
    return offers


def eligible(chain: Chain, offers: Sequence[Offer], consumer: str, max_tokens: int, max_price: int,
             allow: Sequence[str] = ()) -> list[Offer]:
    """Offers the contract would accept for this job, with clear errors when there are too few."""
    allowed = {_normalise_peer(a) for a in allow}
    pool = [o for o in offers if o.address != to_checksum_address(consumer)]
    if allowed:
        pool = [o for o in pool if o.address in allowed or o.peer_id in allowed]
    if len(pool) < 3:
        where = "in the --allow list" if allowed else "registered for this model"
        raise QueryError(f"only {len(pool)} provider(s) {where}; a verified query needs three",
                            "wait for more providers, allow more peers, or choose another model (`mesh models`)")
    affordable = [o for o in pool if o.price <= max_price]
    if len(affordable) < 3:
        prices = sorted(o.price for o in pool)
        raise QueryError(f"only {len(affordable)} provider(s) charge at most {max_price} per token "
                            f"(prices: {', '.join(map(str, prices))})",
                            f"raise --max-price to at least {prices[2]}")
    params = chain.deployment.params
    staked = [o for o in affordable if o.free_stake >= params.lock_for(max_tokens, o.price)]
    if len(staked) < 3:
        raise QueryError(f"only {len(staked)} affordable provider(s) have enough free stake for {max_tokens} tokens",
                            "ask for fewer --max-tokens, or retry when their open jobs have closed")
    return staked


def _normalise_peer(a: str) -> str:
    a = a.strip()
    if a.startswith("0x") and len(a) == 42:
        return to_checksum_address(a)
    return a
