"""The chain-event indexer: the registry's and market's logs -> the ledger, in bounded batches.

    Indexer(ledger, chain).sync() -> SyncReport

Each batch is one eth_getLogs over at most `batch_blocks` blocks for both contracts (halved
automatically when a node refuses a range as too large), decoded against the contracts' ABIs
(`EventDecoder`), and handed to `Ledger.apply_batch`, which stores the rows and moves the cursor
in one transaction. So the indexer is:
  - resumable: a crash loses at most the batch in flight, and the next sync redoes it;
  - idempotent: every log is keyed by (tx hash, log index); re-applying one adds nothing;
  - single-history: before indexing, the chain's id, genesis block, contract addresses and the
    hash of the last indexed block must match what the ledger recorded. A different chain (a
    restarted Anvil, another network, a redeploy) or a rewritten history is refused with a
    LedgerError that says what to do, instead of mixing two histories in one ledger.

Reorganisations are not rolled back: on a chain that reorganises, index behind the head with
`confirmations` (a block that deep is final for practical purposes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import collapse_if_tuple, keccak, to_checksum_address
from web3.exceptions import BlockNotFound

from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import LedgerError

from meshmarket.ledger.records import BatchResult, ChainEvent, ChainIdentity, Cursor, RegistryParams, checksum
from meshmarket.ledger.store import Ledger

REGISTRY_EVENTS = (
    "ProviderRegistered", "ProviderDeregistered", "Staked", "UnstakeRequested", "StakeWithdrawn",
    "EarningsWithdrawn", "Slashed", "Deposited", "CreditWithdrawn", "ThawReclaimed",
)
MARKET_EVENTS = (
    "JobOpened", "SeatsDrawn", "SeatAdded", "ResultCommitted", "ResultRevealed", "JobContested", "DisputeOpened",
    "JuryDrawn", "EvidencePosted", "VoteCommitted", "VoteRevealed", "JobSettled", "JuryPaid",
)
#: Public RPC providers commonly cap eth_getLogs at 2k-10k blocks; 2,000 works nearly everywhere
#: and keeps one batch's transaction short.
DEFAULT_BATCH_BLOCKS = 2_000

RESET_HINT = ("keep this ledger for the chain it indexed and give this chain another one (--ledger URL, "
              "$MESH_LEDGER_URL or another MESH_HOME), or drop the indexed history and start over with "
              "`mesh ledger sync --reset`")


def _to_bytes(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    s = str(v)
    return bytes.fromhex(s[2:] if s.startswith("0x") else s)


def _to_int(v: Any) -> int:
    return v if isinstance(v, int) else int(str(v), 16)


def _hex(v: Any) -> str:
    return "0x" + _to_bytes(v).hex()


def _array(abi_type: str) -> tuple[str, int | None] | None:
    """(element type, length or None) of an array type; None for a non-array."""
    if not abi_type.endswith("]"):
        return None
    i = abi_type.rindex("[")
    n = abi_type[i + 1 : -1]
    return abi_type[:i], int(n) if n else None


def _normalize(inp: Mapping[str, Any], value: Any) -> Any:
    """eth_abi values -> JSON-able ones: checksummed addresses, 0x hex for bytes, lists for arrays,
    dicts (by component name) for structs. `inp` is the ABI input (type and components)."""
    t = inp["type"]
    arr = _array(t)
    if arr is not None:
        return [_normalize({**inp, "type": arr[0]}, v) for v in value]
    if t == "tuple":
        return {c["name"]: _normalize(c, v) for c, v in zip(inp["components"], value)}
    if t == "address":
        return checksum(value)
    if t.startswith("bytes"):
        return "0x" + bytes(value).hex()
    return value


def _static_words(inp: Mapping[str, Any]) -> int | None:
    """32-byte words a static ABI type occupies in place; None for a dynamic type."""
    t = inp["type"]
    arr = _array(t)
    if arr is not None:
        words = _static_words({**inp, "type": arr[0]}) if arr[1] is not None else None
        return None if words is None else words * arr[1]
    if t == "tuple":
        parts = [_static_words(c) for c in inp["components"]]
        return None if any(p is None for p in parts) else sum(parts)
    if t in ("string", "bytes"):
        return None
    return 1


def _reader(inp: Mapping[str, Any], offset: int = 0) -> Callable[[bytes], Any]:
    """A function reading one static value at `offset` of ABI-encoded data, already normalized
    (see `_normalize`). Built once per event type, so decoding a log is a few slices."""
    t = inp["type"]
    arr = _array(t)
    if arr is not None:
        elem = {**inp, "type": arr[0]}
        step = 32 * (_static_words(elem) or 1)
        readers = [_reader(elem, offset + i * step) for i in range(arr[1] or 0)]
        return lambda d: [r(d) for r in readers]
    if t == "tuple":
        fields = []
        at = offset
        for c in inp["components"]:
            fields.append((c["name"], _reader(c, at)))
            at += 32 * (_static_words(c) or 1)
        return lambda d: {name: read(d) for name, read in fields}
    end = offset + 32
    if t.startswith("uint"):
        return lambda d: int.from_bytes(d[offset:end], "big")
    if t == "address":
        start = offset + 12
        return lambda d: checksum("0x" + d[start:end].hex())
    if t.startswith("bytes"):
        stop = offset + int(t[5:])
        return lambda d: "0x" + d[offset:stop].hex()
    if t == "bool":
        return lambda d: d[end - 1] == 1
    if t.startswith("int"):
        return lambda d: int.from_bytes(d[offset:end], "big", signed=True)
    raise ValueError(f"not a static ABI type: {t}")


@dataclass(frozen=True)
class _EventSpec:
    contract: str
    name: str
    #: The ABI inputs in the log's data, and their canonical types (for eth_abi).
    data: tuple[Mapping[str, Any], ...]
    types: tuple[str, ...]
    #: Readers for the indexed topics, and for the data when every field is static: slicing
    #: words is ~20x faster than eth_abi (and tested against it). Events with a dynamic field
    #: (ProviderRegistered's endpoint, DisputeOpened's request, EvidencePosted's tokens) decode
    #: their data with eth_abi.
    topic_readers: tuple[tuple[str, Callable[[bytes], Any]], ...]
    data_readers: tuple[tuple[str, Callable[[bytes], Any]], ...] | None


class EventDecoder:
    """Decodes raw logs (web3 AttributeDicts or plain JSON-RPC dicts) of the two contracts."""

    def __init__(self, abis: Mapping[str, Sequence[Mapping[str, Any]]], addresses: Mapping[str, str],
                 names: Mapping[str, Iterable[str]] | None = None) -> None:
        names = names or {"registry": REGISTRY_EVENTS, "market": MARKET_EVENTS}
        self.addresses = {to_checksum_address(a).lower(): c for c, a in addresses.items()}
        self.specs: dict[bytes, _EventSpec] = {}
        for contract, abi in abis.items():
            wanted = set(names[contract])
            for item in abi:
                if item.get("type") != "event" or item["name"] not in wanted:
                    continue
                self._add(contract, item)
                wanted.discard(item["name"])
            if wanted:
                raise LedgerError(f"the {contract} ABI has no event(s) {sorted(wanted)}",
                                  "the contracts and the ledger are out of step: rebuild the contracts")

    def _add(self, contract: str, item: Mapping[str, Any]) -> None:
        types = [collapse_if_tuple(dict(i)) for i in item["inputs"]]
        topic = keccak(text=f"{item['name']}({','.join(types)})")
        # Indexed values of static types are one word each (no event here indexes a dynamic one).
        indexed = tuple((i["name"], _reader(i)) for i in item["inputs"] if i.get("indexed"))
        data = tuple(i for i in item["inputs"] if not i.get("indexed"))
        data_types = tuple(t for i, t in zip(item["inputs"], types) if not i.get("indexed"))
        data_readers = None
        if all(_static_words(i) is not None for i in data):
            offsets = [0]
            for i in data:
                offsets.append(offsets[-1] + 32 * (_static_words(i) or 1))
            data_readers = tuple((i["name"], _reader(i, o)) for i, o in zip(data, offsets))
        self.specs[topic] = _EventSpec(contract, item["name"], data, data_types, indexed, data_readers)

    @classmethod
    def for_chain(cls, chain: Chain) -> EventDecoder:
        return cls({"registry": chain.registry.abi, "market": chain.market.abi},
                   {"registry": chain.registry.address, "market": chain.market.address})

    @property
    def topics(self) -> list[str]:
        return ["0x" + t.hex() for t in self.specs]

    def decode(self, log: Mapping[str, Any], block_time: int | None = None) -> ChainEvent | None:
        """One log -> ChainEvent; None for a log of another contract or event."""
        topics = [_to_bytes(t) for t in log["topics"]]
        if not topics:
            return None
        spec = self.specs.get(topics[0])
        contract = self.addresses.get(str(log["address"]).lower())
        if spec is None or contract != spec.contract:
            return None
        args: dict[str, Any] = {name: read(topic) for (name, read), topic in zip(spec.topic_readers, topics[1:])}
        data = _to_bytes(log["data"])
        if spec.data_readers is not None:
            for name, read in spec.data_readers:
                args[name] = read(data)
        else:
            for inp, v in zip(spec.data, abi_decode(list(spec.types), data)):
                args[inp["name"]] = _normalize(inp, v)
        if block_time is None:
            ts = log.get("blockTimestamp")
            if ts is None:
                raise LedgerError("the node returned a log without its block's timestamp")
            block_time = _to_int(ts)
        return ChainEvent(
            contract=spec.contract, name=spec.name, block_number=_to_int(log["blockNumber"]),
            block_hash=_hex(log["blockHash"]), block_time=block_time, tx_hash=_hex(log["transactionHash"]),
            log_index=_to_int(log["logIndex"]), args=args,
        )


@dataclass(frozen=True)
class SyncReport:
    chain_id: int
    from_block: int
    to_block: int
    head: int
    batches: int
    #: New logs stored by this run; `skipped` were already in the ledger.
    events: int
    skipped: int
    seconds: float
    reset: bool

    @property
    def up_to_date(self) -> bool:
        return self.to_block >= self.head


class Indexer:
    """Keeps one ledger in step with one deployment's events."""

    def __init__(self, ledger: Ledger, chain: Chain, *, batch_blocks: int = DEFAULT_BATCH_BLOCKS,
                 confirmations: int = 0) -> None:
        if batch_blocks < 1 or confirmations < 0:
            raise ValueError("batch_blocks must be >= 1 and confirmations >= 0")
        self.ledger = ledger
        self.chain = chain
        self.w3 = chain.w3
        self.batch_blocks = batch_blocks
        self.confirmations = confirmations
        self.decoder = EventDecoder.for_chain(chain)

    # -- identity

    def identity(self) -> ChainIdentity:
        dep = self.chain.deployment
        return ChainIdentity(
            chain_id=self.chain.chain_id, genesis_hash=_hex(self.w3.eth.get_block(0)["hash"]),
            token=to_checksum_address(dep.token), registry=to_checksum_address(dep.registry),
            market=to_checksum_address(dep.market),
        )

    def check(self, cursor: Cursor, identity: ChainIdentity | None = None) -> None:
        """Refuse to index if the ledger's history is not this chain's (see module docstring)."""
        identity = identity or self.identity()
        rec = cursor.identity
        problems = []
        if rec.chain_id != identity.chain_id:
            problems.append(f"it indexed chain id {rec.chain_id}, the node is chain id {identity.chain_id}")
        elif rec.genesis_hash != identity.genesis_hash:
            problems.append("the node's genesis block differs from the one it indexed (a new chain, e.g. a restarted Anvil)")
        for what in ("market", "registry", "token"):
            if getattr(rec, what).lower() != getattr(identity, what).lower():
                problems.append(f"it indexed the {what} at {getattr(rec, what)}, "
                                f"the deployment's is at {getattr(identity, what)}")
        if problems:
            raise LedgerError(f"the ledger {self.ledger.url} holds the history of another deployment: "
                              + "; ".join(problems), RESET_HINT)
        if cursor.last_block < 0:
            return
        try:
            block = self.w3.eth.get_block(cursor.last_block)
        except BlockNotFound:
            raise LedgerError(f"the chain has no block {cursor.last_block}, which the ledger {self.ledger.url} "
                              "already indexed (a restarted or reverted chain)", RESET_HINT) from None
        if _hex(block["hash"]) != cursor.last_block_hash:
            raise LedgerError(f"block {cursor.last_block} on the chain is not the one the ledger {self.ledger.url} "
                              "indexed (the chain was reverted or reorganised)", RESET_HINT)

    def _start_block(self) -> int:
        """The registry's deployment block: providers may register before the market is bound."""
        dep = self.chain.deployment
        if dep.start_block:
            return dep.start_block
        # Older deployment records lack it: bisect for the block where the registry's code appeared.
        registry = to_checksum_address(dep.registry)
        lo, hi = 0, dep.block
        try:
            if not self.w3.eth.get_code(registry, hi):
                return dep.block
            while lo < hi:
                mid = (lo + hi) // 2
                if self.w3.eth.get_code(registry, mid):
                    hi = mid
                else:
                    lo = mid + 1
            return lo
        except Exception:  # a node without history answers old-state queries with errors
            return dep.block

    def _bind(self, identity: ChainIdentity) -> Cursor:
        start = self._start_block()
        parent = _hex(self.w3.eth.get_block(start - 1)["hash"]) if start > 0 else "0x" + "00" * 32
        fns = self.chain.registry.functions
        params = RegistryParams(min_job_lock=int(fns.minJobLock().call()), collateral_ratio=int(fns.collateralRatio().call()),
                                max_lock_share=int(fns.maxLockShare().call()), weight_cap=int(fns.weightCap().call()))
        return self.ledger.init_cursor(identity, params, start, parent)

    # -- fetching

    def fetch(self, from_block: int, to_block: int) -> list[ChainEvent]:
        """Decoded events of blocks [from_block, to_block], in chain order."""
        # The raw JSON-RPC answer: web3's result formatters would triple the cost of a big batch,
        # and the decoder reads hex strings as they come.
        reply = self.w3.provider.make_request("eth_getLogs", [{
            "fromBlock": hex(from_block), "toBlock": hex(to_block),
            "address": [self.chain.registry.address, self.chain.market.address],
            "topics": [self.decoder.topics],
        }])
        if "error" in reply:
            err = reply["error"]
            raise ValueError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
        logs = reply["result"]
        times: dict[int, int] = {}
        events = []
        for log in logs:
            if log.get("removed"):
                continue
            bt = None
            if log.get("blockTimestamp") is None:
                # Older nodes omit blockTimestamp from logs: read it from the block, once per block.
                n = _to_int(log["blockNumber"])
                if n not in times:
                    times[n] = int(self.w3.eth.get_block(n)["timestamp"])
                bt = times[n]
            ev = self.decoder.decode(log, bt)
            if ev is not None:
                events.append(ev)
        events.sort(key=lambda e: (e.block_number, e.log_index))
        return events

    def _fetch_bounded(self, lo: int, hi: int) -> tuple[list[ChainEvent], int]:
        """Fetch [lo, hi], halving the range while the node refuses it as too large."""
        while True:
            try:
                return self.fetch(lo, hi), hi
            except LedgerError:
                raise
            except Exception as exc:  # web3 raises many transport and RPC error types
                if hi == lo or not _looks_like_range_limit(exc):
                    raise LedgerError(f"eth_getLogs failed for blocks {lo}..{hi}: {exc}",
                                      "check the node, or lower --batch-blocks") from exc
                hi = lo + (hi - lo) // 2

    # -- the loop

    def sync(self, *, to_block: int | None = None, reset: bool = False,
             on_batch: Callable[[BatchResult], None] | None = None) -> SyncReport:
        """Index from the cursor to the head (minus `confirmations`, at most `to_block`)."""
        t0 = time.perf_counter()
        identity = self.identity()
        if reset:
            self.ledger.reset_chain_data()
        cursor = self.ledger.cursor()
        if cursor is None:
            cursor = self._bind(identity)
        self.check(cursor, identity)
        head = self.w3.eth.block_number
        target = head - self.confirmations
        if to_block is not None:
            target = min(target, to_block)
        first = lo = cursor.last_block + 1
        batches = applied = skipped = 0
        while lo <= target:
            hi = min(target, lo + self.batch_blocks - 1)
            events, hi = self._fetch_bounded(lo, hi)
            hi_hash = _hex(self.w3.eth.get_block(hi)["hash"])
            if any(e.block_number == hi and e.block_hash != hi_hash for e in events):
                raise LedgerError(f"block {hi} changed while it was being indexed (a reorganisation)",
                                  "run the sync again, with --confirmations on a chain that reorganises")
            result = self.ledger.apply_batch(events, from_block=lo, to_block=hi, to_hash=hi_hash)
            batches += 1
            applied += result.applied
            skipped += result.skipped
            if on_batch is not None:
                on_batch(result)
            lo = result.last_block + 1
        return SyncReport(identity.chain_id, first, max(lo - 1, cursor.last_block), head, batches, applied, skipped,
                          time.perf_counter() - t0, reset)


def _looks_like_range_limit(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("range", "too many", "limit", "exceed", "too large", "timeout", "10000"))
