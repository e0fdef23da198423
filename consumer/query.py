"""One verified, paid query as a sequence of phases (what `mesh ask` runs after discovery).

    verify     fetch and check the best-ranked providers' manifests over libp2p, concurrently:
               the manifest hashes to the registered one, is signed by the registered address,
               which is also the Noise-proven peer id, and is for the job's model
    open       escrow the job on-chain (meanwhile the three request streams are being opened)
    fan out    send the request to the three providers at once and stream the first one's
               tokens; a slot whose provider fails is re-routed on-chain to a verified spare
    compare    group the signed results by (output hash, token count): agreement and the text
               (a pure function)
    settle     settle on-chain with three results, or keep the job in the journal for
               `mesh settle` (after the delivery window); build the receipt

Each phase is a method of `Query`, testable alone. trio is confined to the phases that talk to
peers; the chain is synchronous and runs in worker threads.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio
from eth_utils import to_checksum_address
from web3.logs import DISCARD

from consumer.client import Answer, fetch_manifest, run_job
from consumer.discovery import Offer
from consumer.journal import PendingJob
from consumer.receipt import Receipt, SlotReport
from mesh.errors import ChainError, ProviderFailed
from mesh.market import ResultClaim, job_id_for, new_salt
from mesh.p2p import Node, address_from_peer_id
from mesh.protocol import InferRequest, Job, Sampling
from mesh.types import format_amount

#: Providers verified beyond the three needed, ready to step in for a failing one.
SPARES = 2
MANIFEST_TIMEOUT = 5.0


@dataclass
class AskOptions:
    max_tokens: int = 128
    max_price: int = 100
    temperature_milli: int = 0
    seed: int = 0
    first_token_timeout: float = 30.0
    token_timeout: float = 10.0


@dataclass(frozen=True)
class Outcome:
    """What the signed results say: "3/3", "2/3", "none" (three that all differ), or "pending"
    (fewer than three results); the majority's text, else the first delivered answer's."""

    agreement: str
    text: str


def compare(answers: Mapping[int, Answer], slots: int = 3) -> Outcome:
    """The comparison phase: a result is a vote for (output hash, token count)."""
    votes = Counter((a.result.output_hash, a.result.token_count) for a in answers.values())
    top, count = votes.most_common(1)[0] if votes else (None, 0)
    majority = [a.text for a in answers.values() if (a.result.output_hash, a.result.token_count) == top]
    text = majority[0] if count >= 2 else (answers[min(answers)].text if answers else "")
    if len(answers) < slots:
        return Outcome("pending", text)
    return Outcome({3: "3/3", 2: "2/3"}.get(count, "none"), text)


@dataclass
class Slot:
    index: int
    offer: Offer
    report: SlotReport
    answer: Answer | None = None


class _JobNotOpened(Exception):
    """openJob failed: the slots stop; the error itself is raised by the query."""


@dataclass
class Query:
    """The state of one query as it moves through its phases. `asker` gives the chain, the
    account, the journal and the callbacks (consumer.ask.Asker)."""

    asker: object
    sampling: Sampling
    model_hash: bytes
    opts: AskOptions
    on_token: Callable[[str], None] | None = None
    salt: bytes = field(default_factory=new_salt)
    job: Job | None = None
    slots: list[Slot] = field(default_factory=list)
    spares: list[Offer] = field(default_factory=list)
    gas: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    streamed: list[str] = field(default_factory=list)
    streamer: int | None = None
    open_error: BaseException | None = None

    def __post_init__(self) -> None:
        self.t_start = time.perf_counter()
        self.job_id = job_id_for(self.asker.account.address, self.salt)
        self.pending = PendingJob(self.job_id, None)
        self.opened = trio.Event()
        self.replace_lock = trio.Lock()

    # -- verify

    async def verify(self, node: Node, ranked: list[Offer], need: int = 3 + SPARES) -> list[Offer]:
        """Best-ranked first, until `need` verified offers (or none left)."""
        verified: list[Offer] = []
        queue = list(ranked)
        while queue and len(verified) < need:
            batch, queue = queue[: need - len(verified)], queue[need - len(verified):]
            ok: set[str] = set()
            async with trio.open_nursery() as n:
                for o in batch:
                    n.start_soon(self._check_manifest, node, o, ok)
            verified += [o for o in batch if o.address in ok]
        self.timings["discover"] = (time.perf_counter() - self.t_start) * 1000
        return verified

    async def _check_manifest(self, node: Node, o: Offer, ok: set[str]) -> None:
        t0 = time.perf_counter()
        try:
            if address_from_peer_id(o.peer_id) != o.address:
                raise ProviderFailed("wrong_peer", "endpoint peer id is not the registered address")
            m, digest = await fetch_manifest(node, o.peer_id, o.addrs, MANIFEST_TIMEOUT)
            if digest != o.manifest_hash:
                raise ProviderFailed("stale", "manifest differs from the registered one")
            if bytes.fromhex(m.model_sha256[2:]) != self.model_hash:
                raise ProviderFailed("stale", "manifest is for another model")
            ok.add(o.address)
            self.asker.observe(o.address, "connect_ms", (time.perf_counter() - t0) * 1000)
        except Exception as exc:  # a malformed peer must never abort discovery
            self.asker.observe(o.address, "connect_failure", None)
            self.asker.on_event(f"skipping {o.address[:10]}…: {exc if isinstance(exc, ProviderFailed) else repr(exc)}")

    def assign(self, verified: list[Offer]) -> None:
        """The first three verified offers get the slots, the rest wait as spares."""
        self.slots = [Slot(i, o, SlotReport(i, o.address, o.price)) for i, o in enumerate(verified[:3])]
        self.spares = list(verified[3:])
        # The cap covers the dearest spare too, so that any of them can step in.
        self.price_cap = max(o.price for o in verified)

    # -- open

    async def open_job(self) -> None:
        t = time.perf_counter()
        mc, acct, s = self.asker.mc, self.asker.account, self.sampling
        try:
            _, self.job, receipt = await trio.to_thread.run_sync(
                lambda: mc.open_job(acct, self.model_hash, s.prompt_hash(self.model_hash), s.max_tokens, self.price_cap,
                                    [sl.offer.address for sl in self.slots], salt=self.salt, approve=False))
            self.timings["open"] = (time.perf_counter() - t) * 1000
            self.gas["open"] = receipt["gasUsed"]
            self.pending.job = self.job
            self.asker.journal.save(self.pending)
            self.asker.on_event(f"job 0x{self.job_id.hex()} opened: escrow {format_amount(self.job.escrow)}")
        except Exception as exc:  # reported once the slots have stopped
            self.open_error = exc
        finally:
            self.opened.set()  # after self.job is set: the slots read it as soon as this fires

    async def _request(self, index: int) -> InferRequest:
        """The slot's request, once the job is open (the stream was opened meanwhile)."""
        await self.opened.wait()
        if self.open_error is not None:
            raise _JobNotOpened()
        return InferRequest(self.job_id, self.job, index, self.sampling)

    # -- fan out

    async def fan_out(self, node: Node) -> None:
        """Open the job and run the three slots at once; raise openJob's error if it failed."""
        t_gen = time.perf_counter()
        async with trio.open_nursery() as n:
            n.start_soon(self.open_job)
            for slot in self.slots:
                n.start_soon(self._run_slot, node, slot)
        if self.open_error is not None:
            raise self.open_error
        self.timings["generate"] = (time.perf_counter() - t_gen) * 1000

    def _token_sink(self, slot: Slot) -> Callable[[str], None]:
        def sink(text: str) -> None:
            if self.asker.on_any_token:
                self.asker.on_any_token(slot.index, slot.offer.address, text)
            if self.streamer is None:
                self.streamer = slot.index
                self.timings["first_token"] = (time.perf_counter() - self.t_start) * 1000
            if self.streamer == slot.index:
                self.streamed.append(text)
                if self.on_token:
                    self.on_token(text)
        return sink

    async def _run_slot(self, node: Node, slot: Slot) -> None:
        first = True
        while True:
            offer = slot.offer
            req = (lambda: self._request(slot.index)) if first else InferRequest(self.job_id, self.job, slot.index,
                                                                                 self.sampling)
            first = False
            try:
                answer = await run_job(
                    node, offer.peer_id, offer.addrs, req, expected=offer.address,
                    chain_id=self.asker.chain.chain_id, market=self.asker.chain.market.address,
                    on_token=self._token_sink(slot), first_token_timeout=self.opts.first_token_timeout,
                    token_timeout=self.opts.token_timeout)
            except _JobNotOpened:
                return
            except ProviderFailed as exc:
                if not await self._reroute(slot, offer, exc):
                    return
                continue
            self._delivered(slot, answer)
            return

    def _delivered(self, slot: Slot, answer: Answer) -> None:
        slot.answer = answer
        r = slot.report
        r.first_token_ms, r.total_ms, r.tokens, r.status = (answer.first_token_ms, answer.total_ms,
                                                            answer.result.token_count, "delivered")
        self.asker.observe(slot.offer.address, "first_token_ms", answer.first_token_ms)
        self.pending.results[slot.index] = answer.claim
        self.asker.journal.save(self.pending)

    async def _reroute(self, slot: Slot, offer: Offer, exc: ProviderFailed) -> bool:
        """After a failure: replace the slot's provider on-chain with the next spare. False when
        the slot stays empty (no spare, or the job never opened)."""
        await self.opened.wait()  # a provider failing before the job opened: wait for it
        if self.open_error is not None:
            return False
        self.asker.observe(offer.address, "timeout" if exc.code == "timeout" else "failure", None)
        slot.report.status = f"failed ({exc.code})"
        self.asker.on_event(f"provider #{slot.index} {offer.address[:10]}… failed: {exc}")
        async with self.replace_lock:  # each replacement changes the job hash: one at a time
            while self.spares:
                spare = self.spares.pop(0)
                try:
                    self.job, r = await trio.to_thread.run_sync(
                        lambda: self.asker.mc.replace_provider(self.asker.account, self.job_id, self.job, slot.index,
                                                               spare.address))
                except ChainError as err:
                    self.asker.on_event(f"cannot replace with {spare.address[:10]}…: {err}")
                    continue
                self.gas[f"replace_{slot.index}_{len(slot.report.replaced)}"] = r["gasUsed"]
                slot.report.replaced.append(offer.address)
                slot.report.provider, slot.report.price = spare.address, spare.price
                slot.offer = spare
                self.asker.on_event(f"provider #{slot.index} replaced by {spare.address[:10]}…")
                self.pending.job = self.job
                self.asker.journal.save(self.pending)
                return True
        return False

    # -- compare and settle

    @property
    def answers(self) -> dict[int, Answer]:
        return {s.index: s.answer for s in self.slots if s.answer is not None}

    def settle(self) -> Receipt:
        """Compare, then settle on-chain if all three delivered (synchronous: after the node stopped)."""
        outcome = compare(self.answers)
        refund, settled = 0, False
        if outcome.agreement != "pending":
            refund = self._settle_on_chain()
            settled = True
        else:
            for s in self.slots:
                if s.answer is None:
                    s.report.status = s.report.status or "no result"
            deadline = self.job.opened_at + self.asker.chain.deployment.params.delivery_window
            self.asker.on_event(f"only {len(self.answers)} result(s): the job settles after the delivery window "
                                f"(unix {deadline}); run `mesh settle` then (or any later `mesh ask` does it)")
        self.timings["total"] = (time.perf_counter() - self.t_start) * 1000
        return Receipt(self.job_id, self.model_hash, outcome.agreement, outcome.text, [s.report for s in self.slots],
                       self.job.escrow, refund, self.gas, self.timings, settled, "".join(self.streamed))

    def _settle_on_chain(self) -> int:
        results: list[ResultClaim | None] = [s.answer.claim if s.answer else None for s in self.slots]
        mc, chain = self.asker.mc, self.asker.chain
        t = time.perf_counter()
        r = mc.settle(self.asker.account, self.job_id, self.job, results)
        self.timings["settle"] = (time.perf_counter() - t) * 1000
        self.gas["settle"] = r["gasUsed"]
        ev = mc.settled_event(r)
        slashed = {to_checksum_address(e["args"]["provider"]): int(e["args"]["amount"])
                   for e in chain.registry.events.Slashed().process_receipt(r, errors=DISCARD)}
        for i, s in enumerate(self.slots):
            rep = s.report
            rep.paid, rep.agreed = int(ev["paid"][i]), int(ev["paid"][i]) > 0
            rep.slashed = slashed.get(rep.provider, 0)
            if rep.slashed:
                rep.status = "slashed (disagreed)"
        self.asker.journal.remove(self.job_id)
        return int(ev["refund"])
