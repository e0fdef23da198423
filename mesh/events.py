"""The registry's and the market's events, decoded in one place for everyone.

    EventDecoder.for_chain(chain).decode(log) -> Event | None
    get_events(chain, names, from_block, to_block, *topic_filters) -> [Event] in chain order

One decoder, built from the contracts' ABIs: web3's codec (eth_abi) decodes each log's topics and
data, and the ABI's own input names and struct components name the values, so a log reads exactly
as web3's `process_log` reads it (tested in tests/test_indexer.py) at a fraction of its cost (web3
re-derives the ABI types of every log: ~0.5 ms each, a ledger batch holds tens of thousands). Logs
come as web3 returns them or as raw JSON-RPC dicts (hex strings): the ledger's indexer reads the
raw answer of eth_getLogs, a job's state (mesh/lifecycle.py) and the juror's keeper
(provider/court.py) read through `get_events`, the market client (mesh/market.py) reads receipts.

Values as web3 gives them: bytes for bytesN and bytes, checksummed addresses, ints, bools, lists for
arrays, dicts by component name for structs. `REGISTRY_EVENTS` and `MARKET_EVENTS` are the one list
of the events Meshmarket reads; every market event carries its job id as its first topic.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from eth_utils import collapse_if_tuple, event_abi_to_log_topic, to_checksum_address

from meshmarket.mesh.chain import Chain

REGISTRY_EVENTS = (
    "ProviderRegistered", "ProviderDeregistered", "Staked", "UnstakeRequested", "StakeWithdrawn",
    "EarningsWithdrawn", "Slashed", "Deposited", "CreditWithdrawn", "ThawReclaimed",
)
#: In the order a job meets them (JobMarket.sol): each has `bytes32 indexed jobId` first.
MARKET_EVENTS = (
    "JobOpened", "SeatsDrawn", "SeatAdded", "ResultCommitted", "ResultRevealed", "JobContested", "DisputeOpened",
    "JuryDrawn", "EvidencePosted", "VoteCommitted", "VoteRevealed", "JobSettled", "JuryPaid",
)
EVENT_NAMES: Mapping[str, tuple[str, ...]] = {"registry": REGISTRY_EVENTS, "market": MARKET_EVENTS}

Contract = Literal["registry", "market"]


@dataclass(frozen=True)
class Event:
    """One decoded log of the registry or the market, and where it sits in the chain."""

    contract: Contract
    name: str
    args: Mapping[str, Any]
    block_number: int
    log_index: int
    tx_hash: bytes
    block_hash: bytes
    #: The block's timestamp when the node puts it in the log (`blockTimestamp`), else None.
    block_time: int | None = None


@lru_cache(maxsize=1 << 16)
def checksummed(address: str) -> str:
    """EIP-55 form. Cached: a checksum costs a keccak, and the same providers fill every batch."""
    return to_checksum_address(address)


def _shaper(inp: Mapping[str, Any]) -> Callable[[Any], Any] | None:
    """How one decoded value becomes web3's shape (None: as eth_abi returns it): checksummed
    addresses, lists for arrays, dicts by component name for structs."""
    t = inp["type"]
    if t.endswith("]"):
        elem = _shaper({**inp, "type": t[:t.rindex("[")]})
        return (lambda v: list(v)) if elem is None else (lambda v: [elem(x) for x in v])
    if t == "tuple":
        fields = [(c["name"], _shaper(c)) for c in inp["components"]]
        return lambda v: {name: x if shape is None else shape(x) for (name, shape), x in zip(fields, v)}
    if t == "address":
        return checksummed
    return None


@dataclass(frozen=True)
class _Spec:
    contract: Contract
    name: str
    topic_types: tuple[str, ...]
    topic_fields: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    data_types: tuple[str, ...]
    data_fields: tuple[tuple[str, Callable[[Any], Any] | None], ...]


def _bytes(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    s = str(v)
    return bytes.fromhex(s[2:] if s.startswith("0x") else s)


def _int(v: Any) -> int:
    return v if isinstance(v, int) else int(str(v), 16)


_decoders: weakref.WeakKeyDictionary[Chain, EventDecoder] = weakref.WeakKeyDictionary()


class EventDecoder:
    """Decodes the logs of the two contracts (any other log: None)."""

    def __init__(self, abis: Mapping[Contract, Sequence[Mapping[str, Any]]], addresses: Mapping[Contract, str],
                 codec: Any) -> None:
        self.codec = codec
        self.addresses = {str(a).lower(): c for c, a in addresses.items()}
        self._specs: dict[bytes, _Spec] = {}
        self._topics: dict[str, bytes] = {}
        for contract, abi in abis.items():
            wanted = set(EVENT_NAMES[contract])
            for item in abi:
                if item.get("type") == "event" and item["name"] in wanted:
                    self._add(contract, item)
                    wanted.discard(item["name"])
            if wanted:
                raise ValueError(f"the {contract} ABI has no event(s) {sorted(wanted)}: rebuild the contracts")

    def _add(self, contract: Contract, item: Mapping[str, Any]) -> None:
        indexed = [i for i in item["inputs"] if i.get("indexed")]
        data = [i for i in item["inputs"] if not i.get("indexed")]
        topic = event_abi_to_log_topic(dict(item))
        self._topics[item["name"]] = topic
        self._specs[topic] = _Spec(
            contract, item["name"],
            tuple(collapse_if_tuple(dict(i)) for i in indexed), tuple((i["name"], _shaper(i)) for i in indexed),
            tuple(collapse_if_tuple(dict(i)) for i in data), tuple((i["name"], _shaper(i)) for i in data))

    @classmethod
    def for_chain(cls, chain: Chain) -> EventDecoder:
        """The decoder of `chain`'s contracts, built once per Chain."""
        dec = _decoders.get(chain)
        if dec is None:
            dec = _decoders[chain] = cls({"registry": chain.registry.abi, "market": chain.market.abi},
                                         {"registry": chain.registry.address, "market": chain.market.address},
                                         chain.w3.codec)
        return dec

    def topic(self, name: str) -> str:
        return "0x" + self._topics[name].hex()

    def topics(self, names: Iterable[str] | None = None) -> list[str]:
        """topic0 of the named events (all of them when None), for an eth_getLogs filter."""
        return [self.topic(n) for n in (self._topics if names is None else names)]

    def decode(self, log: Mapping[str, Any]) -> Event | None:
        """One log (web3's or raw JSON-RPC) -> Event; None for a log of another contract or event."""
        topics = log["topics"]
        spec = self._specs.get(_bytes(topics[0])) if topics else None
        if spec is None or self.addresses.get(str(log["address"]).lower()) != spec.contract:
            return None
        args: dict[str, Any] = {}
        for (name, shape), t, raw in zip(spec.topic_fields, spec.topic_types, topics[1:]):
            (v,) = self.codec.decode([t], _bytes(raw))
            args[name] = v if shape is None else shape(v)
        for (name, shape), v in zip(spec.data_fields, self.codec.decode(spec.data_types, _bytes(log["data"]))):
            args[name] = v if shape is None else shape(v)
        ts = log.get("blockTimestamp")
        return Event(spec.contract, spec.name, args, _int(log["blockNumber"]), _int(log["logIndex"]),
                     _bytes(log["transactionHash"]), _bytes(log["blockHash"]), None if ts is None else _int(ts))

    def in_receipt(self, receipt: Mapping[str, Any], name: str) -> list[Event]:
        """The `name` events a transaction emitted (of these contracts only)."""
        return [e for e in map(self.decode, receipt["logs"]) if e is not None and e.name == name]


def get_events(chain: Chain, names: Iterable[str], from_block: int, to_block: int | str = "latest",
               *filters: bytes | str | None) -> list[Event]:
    """The named events of blocks [from_block, to_block] in chain order (one eth_getLogs).
    `filters` match the indexed arguments in order (a bytes32 or an address; None: any)."""
    dec = EventDecoder.for_chain(chain)
    topics: list[Any] = [dec.topics(names)]
    for f in filters:
        topics.append(None if f is None else "0x" + (_bytes(f).rjust(32, b"\x00")).hex())
    logs = chain.w3.eth.get_logs({"address": [chain.registry.address, chain.market.address],
                                  "fromBlock": from_block, "toBlock": to_block, "topics": topics})
    found = [e for e in map(dec.decode, logs) if e is not None]
    return sorted(found, key=lambda e: (e.block_number, e.log_index))


def registrations(chain: Chain, model_hash: bytes | None = None) -> list[Mapping[str, Any]]:
    """The arguments of every ProviderRegistered event since the registry was deployed (for one
    model if given), in chain order."""
    start = chain.deployment.start_block or chain.deployment.block
    return [e.args for e in get_events(chain, ["ProviderRegistered"], start, "latest", None, model_hash)]
