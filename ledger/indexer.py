"""The chain-event indexer: the registry's and market's logs -> the ledger, in bounded batches.

    Indexer(ledger, chain).sync() -> SyncReport

Each batch is one eth_getLogs over at most `batch_blocks` blocks for both contracts (halved
automatically when a node refuses a range as too large), decoded by the core's one decoder
(mesh.events.EventDecoder), turned into the ledger's JSON-able `ChainEvent`s (`chain_event`) and
handed to `Ledger.apply_batch`, which stores the rows and moves the cursor in one transaction. So
the indexer is:
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address
from web3.exceptions import BlockNotFound

from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import LedgerError
from meshmarket.mesh.events import Event, EventDecoder

from meshmarket.ledger.records import BatchResult, ChainEvent, ChainIdentity, Cursor, RegistryParams
from meshmarket.ledger.store import Ledger

#: Public RPC providers commonly cap eth_getLogs at 2k-10k blocks; 2,000 works nearly everywhere
#: and keeps one batch's transaction short.
DEFAULT_BATCH_BLOCKS = 2_000

RESET_HINT = ("keep this ledger for the chain it indexed and give this chain another one (--ledger URL, "
              "$MESH_LEDGER_URL or another MESH_HOME), or drop the indexed history and start over with "
              "`mesh ledger sync --reset`")


def _to_int(v: Any) -> int:
    return v if isinstance(v, int) else int(str(v), 16)


def _hex(v: Any) -> str:
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    s = str(v)
    return s if s.startswith("0x") else "0x" + s


def _jsonable(v: Any) -> Any:
    """A decoded value as the ledger stores it: bytes as 0x hex, arrays as lists, structs as dicts
    (addresses are checksummed strings already, integers and bools stay)."""
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def chain_event(e: Event, block_time: int | None = None) -> ChainEvent:
    """A decoded log -> the ledger's ChainEvent (JSON-able arguments, hex hashes, its block's time:
    `block_time`, else the one the node put in the log)."""
    if block_time is None:
        if e.block_time is None:
            raise LedgerError("the node returned a log without its block's timestamp")
        block_time = e.block_time
    return ChainEvent(contract=e.contract, name=e.name, block_number=e.block_number, block_hash=_hex(e.block_hash),
                      block_time=block_time, tx_hash=_hex(e.tx_hash), log_index=e.log_index,
                      args={k: _jsonable(v) for k, v in e.args.items()})


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
            "topics": [self.decoder.topics()],
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
            ev = self.decoder.decode(log)
            if ev is not None:
                events.append(chain_event(ev, bt))
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
