"""The gateway's warm view of the market: which models are offered, by whom, at what price, with
which build. Kept in memory and refreshed in the background, so a request never waits for
discovery or a manifest fetch.

    registrations(chain)  -> the model hashes ever registered
    discover(chain, hash)  -> each model's current offers (price, endpoint, free stake)
    fetch_manifest(...)    -> each offer's signed manifest, checked against its registered hash and
                              cached by that hash (a manifest never changes under the same hash)

A model's OpenAI id is a slug of its manifest's name and quantization
("smollm2-135m-instruct-q4_1"); its "0x" sha256 works as an id too.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import trio

from meshmarket.consumer.client import fetch_manifest
from meshmarket.consumer.discovery import Offer, discover
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import MeshError
from meshmarket.mesh.events import registrations
from meshmarket.mesh.p2p import Node
from meshmarket.mesh.protocol import Manifest

log = logging.getLogger("meshmarket.gateway")

#: A provider's context when no manifest says it (the provider CLI's default --ctx).
DEFAULT_CONTEXT = 2048
MANIFEST_TIMEOUT = 5.0


def slug(name: str, quantization: str) -> str:
    """'SmolLM2 135M Instruct', 'Q4_1' -> 'smollm2-135m-instruct-q4_1'."""
    base = re.sub(r"[^a-z0-9._]+", "-", f"{name} {quantization}".lower()).strip("-")
    return base or "model"


@dataclass
class ModelEntry:
    model_hash: bytes
    offers: list[Offer] = field(default_factory=list)
    manifests: dict[str, Manifest] = field(default_factory=dict)
    id: str = ""

    @property
    def hash_hex(self) -> str:
        return "0x" + self.model_hash.hex()

    def _any(self) -> Manifest | None:
        return next(iter(self.manifests.values()), None)

    @property
    def name(self) -> str:
        m = self._any()
        return m.model_id if m else self.hash_hex

    @property
    def context_length(self) -> int:
        """The smallest context among the pool's manifests: the draw may seat any of them."""
        return min((m.context_length for m in self.manifests.values()), default=DEFAULT_CONTEXT)

    def builds(self) -> dict[str, str]:
        return {a: m.build.fingerprint if m.build else "" for a, m in self.manifests.items()}

    @property
    def fingerprint(self) -> str:
        """The build most of the pool declares (what streamed chunks show before the receipt)."""
        counts = Counter(b for b in self.builds().values() if b)
        return counts.most_common(1)[0][0] if counts else ""

    def as_model(self) -> dict:
        m = self._any()
        prices = [o.price for o in self.offers]
        return {"id": self.id, "model_hash": self.hash_hex, "name": self.name,
                "architecture": m.architecture if m else None, "quantization": m.quantization if m else None,
                "context_length": self.context_length, "providers": len(self.offers),
                "min_price": min(prices, default=None), "max_price": max(prices, default=None),
                "system_fingerprint": self.fingerprint or None}


class Catalog:
    """Models and offers of one pool (the open market, or a private group), refreshed in the
    background; `resolve` answers from memory."""

    def __init__(self, chain: Chain, node: Node, group: bytes | None = None) -> None:
        self.chain = chain
        self.node = node
        self.group = group
        self.entries: dict[bytes, ModelEntry] = {}
        self._manifests: dict[bytes, Manifest] = {}
        #: provider address -> unix time it last answered us (a manifest or a token)
        self.last_seen: dict[str, float] = {}
        self.refreshed_at = 0.0
        self._lock = trio.Lock()

    def models(self) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.offers]

    def resolve(self, name: str) -> ModelEntry | None:
        """By id, "0x" hash or manifest name; "default" is the market's only model, if it has one."""
        n = name.strip().lower()
        models = self.models()
        if n == "default" and len(models) == 1:
            return models[0]
        for e in models:
            if n in (e.id, e.hash_hex, e.name.lower()):
                return e
        return None

    def by_hash(self, model_hash: bytes | str) -> ModelEntry | None:
        key = bytes.fromhex(model_hash.removeprefix("0x")) if isinstance(model_hash, str) else model_hash
        return self.entries.get(key)

    def seen(self, provider: str) -> None:
        self.last_seen[provider] = time.time()

    async def refresh(self) -> None:
        """Offers from the chain (a worker thread), then the manifests not cached yet (concurrently)."""
        async with self._lock:
            offers = await trio.to_thread.run_sync(self._discover)
            async with trio.open_nursery() as n:
                for model_hash, found in offers.items():
                    entry = self.entries.setdefault(model_hash, ModelEntry(model_hash))
                    entry.offers = found
                    current = {o.address for o in found}
                    entry.manifests = {a: m for a, m in entry.manifests.items() if a in current}
                    for o in found:
                        n.start_soon(self._manifest, entry, o)
            self._name_models()
            self.refreshed_at = time.time()

    def _discover(self) -> dict[bytes, list[Offer]]:
        hashes = dict.fromkeys(bytes(args["modelHash"]) for args in registrations(self.chain))
        return {h: discover(self.chain, h, self.group) for h in hashes}

    async def _manifest(self, entry: ModelEntry, offer: Offer) -> None:
        cached = self._manifests.get(offer.manifest_hash)
        if cached is None:
            try:
                cached, digest = await fetch_manifest(self.node, offer.peer_id, offer.addrs, MANIFEST_TIMEOUT)
            except MeshError as exc:
                log.info("gateway: no manifest from %s: %s", offer.address, exc)
                entry.manifests.pop(offer.address, None)
                return
            if digest != offer.manifest_hash or cached.model_sha256 != entry.hash_hex:
                log.warning("gateway: %s serves a manifest that is not the one it registered", offer.address)
                return
            self._manifests[offer.manifest_hash] = cached
            self.seen(offer.address)
        entry.manifests[offer.address] = cached

    def _name_models(self) -> None:
        """Each model's id: the slug of its name, with a hash suffix if two models share it."""
        named = {h: (slug(e.name, e._any().quantization) if e._any() else "model-" + h.hex()[:12])
                 for h, e in self.entries.items()}
        counts = Counter(named.values())
        for h, e in self.entries.items():
            e.id = named[h] if counts[named[h]] == 1 else f"{named[h]}-{h.hex()[:8]}"

    async def run(self, every: float, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh now, report ready, then every `every` seconds (a failure is logged, not fatal)."""
        started = False
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - the chain may be down for a while
                log.warning("gateway: market refresh failed: %s", exc)
            if not started:
                started = True
                task_status.started()
            await trio.sleep(every)
