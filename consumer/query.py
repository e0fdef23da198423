"""One verified, paid query as a sequence of phases (what `mesh ask` runs after discovery).

    open       request the job on-chain (escrow, model, pool, prompt hash): nobody is chosen yet
    draw       the next transaction draws three seats from the pool, by stake, with the open
               block's hash as seed; meanwhile the pool's manifests are fetched and checked
    fan out    send the request to the three seats at once and stream the first one's tokens; a
               seat that fails (unreachable, busy, stalled, lying about its answer) is answered
               by adding a seat, drawn like the others (never chosen), up to five
    compare    group the signed results by (output hash, token count) (a pure function)
    settle     settle on-chain when every seat answered: agreed results are paid at once; a
               disagreement becomes a contest (a provisional outcome, or a jury if a party
               disputes). With a seat missing, the job waits in the journal for
               consumer.settlement (a seat may be left out only after the claim window)

The answer the consumer may pay for is always shown and saved (journal), whatever happens.
Each phase is a method of `Query`; trio is confined to the phases that talk to peers, the chain
is synchronous and runs in worker threads. What happens is reported as typed events
(consumer.query_events) to one sink, in order; the finished query is its Receipt. Its
collaborators (chain, market client, account, journal, the ledger's observer) are given to it,
not looked up.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from meshmarket.consumer import query_events as ev
from meshmarket.consumer.client import Answer, fetch_manifest, run_job
from meshmarket.consumer.discovery import Offer
from meshmarket.consumer.query_events import EventSink, Observer, QueryEvent
from meshmarket.consumer.journal import Journal, PendingJob
from meshmarket.consumer.receipt import Receipt, SlotReport
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import ChainError, PromptTooLong, ProviderFailed, RequestRefused
from meshmarket.mesh.events import EventDecoder
from meshmarket.mesh.lifecycle import Contest, Deadlines
from meshmarket.mesh.market import OUTCOMES, ZERO32, MarketClient
from meshmarket.mesh.p2p import Node
from meshmarket.mesh.protocol import SEATS, InferRequest, Job, Manifest, Sampling, canonical_json

MANIFEST_TIMEOUT = 5.0
#: A pool this small is dialled while the job opens (its seats are among it), and waited for this
#: long at most after the open is mined before the draw.
PREDIAL_POOL, PREFETCH_GRACE = 8, 0.25
#: The most UTF-8 bytes one token of a prompt is taken to cover (the pre-draw context check).
BYTES_PER_TOKEN_MAX = 8
#: A seat that answers "busy" is asked again this many times, after BUSY_BACKOFF x attempt seconds,
#: before a seat is added in its place (an added seat costs gas; a provider runs one job at a time).
BUSY_RETRIES, BUSY_BACKOFF = 3, 0.5
#: Refusals that are about the request, not the provider: another seat would refuse it too.
REQUEST_FAULTS = frozenset({"context_overflow", "too_large", "bad_request", "mismatch", "wrong_model"})


@dataclass
class AskOptions:
    max_tokens: int = 128
    max_price: int = 100
    temperature_milli: int = 0
    top_p_milli: int = 1000
    seed: int = 0
    stop: tuple[str, ...] = ()
    #: The pool: 0 the open market, else a private mesh (consumer.discovery.group_id).
    group: bytes = ZERO32
    first_token_timeout: float = 30.0
    token_timeout: float = 10.0
    #: Seats a job may grow to when seats fail (the contract allows five).
    max_seats: int = SEATS
    #: Refuse a pool with fewer providers able to sit on a jury (consumer.discovery.check_jury);
    #: 0 turns the check off.
    min_pool: int = 6
    #: Dispute a contested job whose valid results are not all paid provisionally (a jury then
    #: judges every seat; the consumer's jury reserve pays it unless nothing changes in its favour,
    #: when its bond does: docs/PROTOCOL.md, the court). Off by default: a disagreement between
    #: honest builds is settled without a jury.
    dispute: bool = False


@dataclass(frozen=True)
class Outcome:
    """What the signed results say. `kind`: "agreed" (two or more, all equal), "contested"
    (anything else with a valid result), "refunded" (no valid result); `agreement` reads "k/n":
    k equal valid results of n seats that answered; `text` is the answer the results support
    (the strict majority's, else the first valid answer delivered)."""

    kind: str
    agreement: str
    text: str
    #: The seats whose results support `text`.
    seats: tuple[int, ...] = ()


def compare(answers: Mapping[int, Answer]) -> Outcome:
    """The comparison phase: a valid result is a vote for (output hash, token count); a signed
    claim of more tokens than the job allows (a lie) is no vote."""
    valid = {i: a for i, a in sorted(answers.items()) if not a.lie}
    votes = Counter(_vote(a) for a in valid.values())
    ranked = votes.most_common()
    top, count = ranked[0] if ranked else (None, 0)
    if not (count >= 2 and (len(ranked) == 1 or ranked[1][1] < count)) and valid:
        top = _vote(next(iter(valid.values())))  # no strict majority: the first valid answer
    seats = tuple(i for i, a in valid.items() if _vote(a) == top)
    if not valid:
        kind = "refunded"
    elif len(valid) >= 2 and count == len(valid):
        kind = "agreed"
    else:
        kind = "contested"
    return Outcome(kind, f"{count}/{len(answers)}", valid[seats[0]].text if seats else "", seats)


def _vote(a: Answer) -> tuple[bytes, int]:
    return a.result.output_hash, a.result.token_count


@dataclass
class Query:
    """The state of one query as it moves through its phases. `mc` sends its transactions from
    `account` on `chain`; `journal` keeps its job until it closes; `observe` records what each
    seat did for the ledger; `sink` gets its events (consumer.query_events); `offers` are the
    pool's providers by address (where to reach a drawn seat). `receipt` is set once it settled."""

    chain: Chain
    mc: MarketClient
    account: LocalAccount
    journal: Journal
    sampling: Sampling
    model_hash: bytes
    opts: AskOptions
    offers: dict[str, Offer]
    observe: Observer = ev.observe_nothing
    sink: EventSink = ev.ignore
    job_id: bytes = b""
    job: Job | None = None
    slots: list[SlotReport] = field(default_factory=list)
    answers: dict[int, Answer] = field(default_factory=dict)
    manifests: dict[str, Manifest] = field(default_factory=dict)
    #: Seats whose manifest was rejected, and why (their build counts as unknown).
    manifest_problems: dict[str, str] = field(default_factory=dict)
    gas: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    streamed: list[str] = field(default_factory=list)
    streamer: int | None = None

    def __post_init__(self) -> None:
        self.t_start = time.perf_counter()
        self.pending: PendingJob | None = None
        #: Pool members whose manifest fetch ended (answered or not).
        self.dialled: set[str] = set()
        #: A seat's refusal of the request itself (REQUEST_FAULTS), if any.
        self.request_fault: ProviderFailed | None = None
        self.seat_lock = trio.Lock()
        #: Seats whose request has been admitted (or refused) by their provider: a seat may be
        #: added only when none is in flight, since adding one changes the job they check.
        self.in_flight: set[int] = set()
        self.settled_flight = trio.Condition()
        self.receipt: Receipt | None = None

    def _emit(self, event: QueryEvent) -> None:
        self.sink(event)

    async def run(self, node: Node) -> Receipt:
        """Every phase, on `node`, in the caller's trio loop (the chain's calls in worker threads)."""
        await self.open_and_draw(node)
        await self.fan_out(node)
        return await trio.to_thread.run_sync(self.settle)

    # -- open and draw

    async def open_and_draw(self, node: Node) -> None:
        """Open the job; meanwhile dial the pool when it is small (the seats will be among them: their
        connections are then warm, and their manifests say their context). Check what can be
        checked before any escrow is taken, then draw the seats (the two transactions run in worker
        threads)."""
        async with trio.open_nursery() as n:
            for o in self._predial():
                n.start_soon(self._fetch_manifest, node, o)
            await trio.to_thread.run_sync(self._open_sync)
            with trio.move_on_after(PREFETCH_GRACE):  # the dialling usually ends before the open is mined
                while len(self.dialled) < len(self._predial()):
                    await trio.sleep(0.005)
            self._check_context()
            await trio.to_thread.run_sync(self._draw_sync)

    def _predial(self) -> list[Offer]:
        """The pool members a draw could seat (at or under the price cap), if there are few."""
        could = [o for o in self.offers.values() if o.price <= self.opts.max_price]
        return could if len(could) <= PREDIAL_POOL else []

    def _open_sync(self) -> None:
        s = self.sampling
        t = time.perf_counter()
        self.job_id, job, r1 = self.mc.open_job(self.account, self.model_hash, s.prompt_hash(self.model_hash),
                                                s.max_tokens, self.opts.max_price, group=self.opts.group, approve=False)
        self.pending = PendingJob(self.job_id, job)
        self.journal.save(self.pending)
        self.timings["open"] = (time.perf_counter() - t) * 1000
        self.gas["open"] = r1["gasUsed"]
        self.job = job

    def _check_context(self) -> None:
        """Refuse, before the draw takes any escrow, a request that cannot fit the pool's context.
        The consumer has no tokenizer: a prompt is taken to be at least one token per
        BYTES_PER_TOKEN_MAX bytes (a bound no tokenizer of these models beats on real text), so only
        a request that certainly cannot fit is refused here; the seats refuse the rest exactly."""
        contexts = [m.context_length for m in self.manifests.values()]
        if not contexts:
            return
        least = -(-self.sampling.prompt_bytes // BYTES_PER_TOKEN_MAX) + self.sampling.max_tokens
        if least > max(contexts):
            raise PromptTooLong(f"the prompt (at least {least - self.sampling.max_tokens} tokens) plus max_tokens "
                                f"{self.sampling.max_tokens} cannot fit the providers' context of at most "
                                f"{max(contexts)} tokens", job_id=self.job_id, limit=max(contexts))

    def _draw_sync(self) -> None:
        t = time.perf_counter()
        self.job, r2 = self.mc.draw_seats(self.account, self.job)
        self.timings["draw"] = (time.perf_counter() - t) * 1000
        self.gas["draw"] = r2["gasUsed"]
        self.pending.job = self.job
        self.journal.save(self.pending)
        self.slots = [SlotReport(i, self.job.seats[i], self.job.prices[i]) for i in range(self.job.seat_count)]
        self._emit(ev.Drawn(self.job_id, tuple(self.job.seats[:self.job.seat_count]), self.job.held))

    async def _fetch_manifest(self, node: Node, o: Offer) -> None:
        """A seat's manifest (build, hardware) for the receipt; never in the way of a request."""
        if o.address in self.manifests or o.address in self.manifest_problems:
            return
        try:
            m, digest = await fetch_manifest(node, o.peer_id, o.addrs, MANIFEST_TIMEOUT)
        except ProviderFailed as exc:
            if exc.code == "bad_manifest":
                self._manifest_rejected(o, str(exc))
            return  # a seat without a manifest still serves; the receipt says its build is unknown
        finally:
            self.dialled.add(o.address)
        if digest != o.manifest_hash:
            self._manifest_rejected(o, "it serves a manifest that is not the one it registered (registered again?)")
        elif m.model_sha256 != "0x" + self.model_hash.hex():
            self._manifest_rejected(o, "its manifest describes another model file")
        else:
            self.manifests[o.address] = m

    def _manifest_rejected(self, o: Offer, why: str) -> None:
        self.manifest_problems[o.address] = why
        self._emit(ev.ManifestRejected(o.address, why))

    # -- fan out

    async def fan_out(self, node: Node) -> None:
        t = time.perf_counter()
        async with trio.open_nursery() as n:
            for i in range(self.job.seat_count):
                n.start_soon(self._run_seat, node, i)
                if self.job.seats[i] in self.offers:
                    n.start_soon(self._fetch_manifest, node, self.offers[self.job.seats[i]])
        self.timings["generate"] = (time.perf_counter() - t) * 1000

    def _tokens(self, seat: int) -> Callable[[str], None]:
        """What a seat's stream calls with each piece of text: the first seat to produce one is the
        one shown while the answer streams."""
        def on_token(text: str) -> None:
            self.in_flight.discard(seat)
            if self.streamer is None:
                self.streamer = seat
                self.timings["first_token"] = (time.perf_counter() - self.t_start) * 1000
            if self.streamer == seat:
                self.streamed.append(text)
            self._emit(ev.SeatToken(seat, self.job.seats[seat], text, self.streamer == seat))
        return on_token

    async def _run_seat(self, node: Node, seat: int) -> None:
        retried, busy = False, 0
        while seat is not None:
            address = self.job.seats[seat]
            offer = self.offers.get(address)
            job_sent = self.job
            self.in_flight.add(seat)
            try:
                if offer is None:
                    raise ProviderFailed("unreachable", "no endpoint is registered for this seat", address)
                answer = await run_job(node, offer.peer_id, offer.addrs,
                                       InferRequest(self.job_id, job_sent, seat, self.sampling),
                                       chain_id=self.chain.chain_id, market=self.chain.market.address,
                                       on_token=self._tokens(seat), first_token_timeout=self.opts.first_token_timeout,
                                       token_timeout=self.opts.token_timeout)
            except ProviderFailed as exc:
                await self._landed(seat)
                if exc.code == "unpaid" and job_sent is not self.job and not retried:
                    retried = True  # a seat was added while this request travelled: resend the job
                    continue
                if exc.code == "busy" and busy < BUSY_RETRIES:
                    busy += 1  # one job at a time per engine: the seat is likely free in a moment
                    await trio.sleep(BUSY_BACKOFF * busy)
                    continue
                if exc.code in REQUEST_FAULTS:
                    # The request itself is refused: every seat would refuse it, so adding one would
                    # only cost gas. The job settles without results (refunded) after its claim window.
                    self.request_fault = exc
                    self.slots[seat].status = f"refused ({exc.code})"
                    self._emit(ev.SeatRefused(seat, address, exc))
                    return
                seat = await self._failed(seat, exc)
                retried = False
                continue
            await self._landed(seat)
            self._delivered(seat, answer)
            return

    async def _landed(self, seat: int) -> None:
        async with self.settled_flight:
            self.in_flight.discard(seat)
            self.settled_flight.notify_all()

    def _delivered(self, seat: int, answer: Answer) -> None:
        self.answers[seat] = answer
        r = self.slots[seat]
        r.first_token_ms, r.total_ms, r.tokens = answer.first_token_ms, answer.total_ms, answer.result.token_count
        r.status = "lied: claims more tokens than the job allows" if answer.lie else "delivered"
        self.observe(answer.provider, "first_token_ms", answer.first_token_ms, self.job_id)
        self.pending.results[seat], self.pending.texts[seat] = answer.claim, answer.text
        self.journal.save(self.pending)
        self._emit(ev.Delivered(seat, answer.provider, answer.result.token_count, answer.first_token_ms, answer.lie))

    async def _failed(self, seat: int, exc: ProviderFailed) -> int | None:
        """A seat failed: note it, and add a drawn seat in its place (None: no more seats)."""
        address = self.job.seats[seat]
        self.observe(address, "timeout" if exc.code == "timeout" else "failure", None, self.job_id)
        self.slots[seat].status = f"failed ({exc.code})"
        self._emit(ev.SeatFailed(seat, address, exc))
        async with self.seat_lock:
            if self.job.seat_count >= self.opts.max_seats:
                return None
            async with self.settled_flight:
                while self.in_flight:
                    await self.settled_flight.wait()
            try:
                job, new, r = await trio.to_thread.run_sync(lambda: self.mc.add_seat(self.account, self.job))
            except ChainError as err:
                self._emit(ev.SeatNotAdded(err))
                return None
            self.job = self.pending.job = job
            self.journal.save(self.pending)
            self.gas[f"add_seat_{new}"] = r["gasUsed"]
            self.slots.append(SlotReport(new, job.seats[new], job.prices[new]))
            self._emit(ev.SeatAdded(new, job.seats[new]))
            return new

    # -- compare and settle

    def settle(self) -> Receipt:
        """Compare, then settle on-chain if every seat answered (synchronous: after the node stopped)."""
        if self.request_fault is not None and not self.answers:
            p = self.chain.deployment.params
            raise RequestRefused(f"the seats refused the request: {self.request_fault.message}", job_id=self.job_id,
                                 fault=self.request_fault,
                                 deadline=Deadlines(p, self.job).claim_end,
                                 now=self.chain.pending_time())
        outcome = compare(self.answers)
        missing = [i for i in range(self.job.seat_count) if i not in self.answers]
        refund, settled, kind = 0, False, outcome.kind
        if missing:
            kind = "pending"
            for i in missing:
                self.slots[i].status = self.slots[i].status or "no result"
            deadline = Deadlines(self.chain.deployment.params, self.job).claim_end
            self._emit(ev.Pending(self.job_id, tuple(missing), deadline, self.chain.pending_time()))
        else:
            try:
                refund, settled, kind = self._settle_on_chain(outcome)
            except ChainError as exc:
                kind = "pending"
                self._emit(ev.SettleFailed(self.job_id, exc))
        self.timings["total"] = (time.perf_counter() - self.t_start) * 1000
        builds = {a: m.build.fingerprint if m.build else "" for a, m in self.manifests.items()}
        answering = {builds.get(self.job.seats[i], "") for i in outcome.seats}
        answer = self.answers[outcome.seats[0]].result if outcome.seats else None
        for i in outcome.seats:
            self.slots[i].backs_answer = True
        self.receipt = Receipt(self.job_id, self.model_hash, outcome.agreement, outcome.text, self.slots,
                               self.job.held, refund, self.gas, self.timings, settled, "".join(self.streamed),
                               outcome=kind, builds=builds,
                               system_fingerprint=answering.pop() if len(answering) == 1 else "",
                               finish_reason=answer.finish_reason if answer else "",
                               prompt_tokens=answer.prompt_tokens if answer else 0)
        return self.receipt

    def _settle_on_chain(self, outcome: Outcome) -> tuple[int, bool, str]:
        t = time.perf_counter()
        r = self.mc.settle(self.account, self.job, [self.answers[i].claim for i in range(self.job.seat_count)])
        self.timings["settle"] = (time.perf_counter() - t) * 1000
        self.gas["settle"] = r["gasUsed"]
        contest = self.mc.contest_of(r)
        if contest is not None:
            self._contested(contest)
            return 0, False, "contested"
        settled = self.mc.settled_event(r)
        slashed = {to_checksum_address(e.args["provider"]): int(e.args["amount"])
                   for e in EventDecoder.for_chain(self.chain).in_receipt(r, "Slashed")}
        for i, s in enumerate(self.slots):
            s.paid, s.agreed = int(settled["paid"][i]), int(settled["paid"][i]) > 0
            s.slashed = slashed.get(s.provider, 0)
            if s.slashed:
                s.status = "slashed: signed more tokens than the job allows"
        self.journal.remove(self.job_id)
        kind = OUTCOMES[settled["outcome"]]
        self._emit(ev.Settled(self.job_id, kind, tuple(int(x) for x in settled["paid"]), int(settled["refund"])))
        return int(settled["refund"]), True, kind

    def _contested(self, contest: Contest) -> None:
        """The seats disagreed: say what happens next, and dispute if asked to and someone's valid
        result would go unpaid."""
        params = self.chain.deployment.params
        for i, s in enumerate(self.slots):
            if contest.slashed >> i & 1:
                s.status = "to be slashed: signed more tokens than the job allows"
            elif contest.present >> i & 1:
                s.status = "paid unless a jury decides otherwise" if contest.provisional >> i & 1 else \
                    "unpaid unless a jury decides otherwise"
        self._emit(ev.Contested(self.job_id, params.dispute_window))
        unpaid = contest.present & ~contest.provisional
        if self.opts.dispute and unpaid and self.job.jury_fee < params.min_jury_fee:
            self._emit(ev.DisputeTooSmall(self.job_id, self.job.jury_fee, params.min_jury_fee))
        elif self.opts.dispute and unpaid:
            t = time.perf_counter()
            request = canonical_json(self.sampling.request(self.model_hash))
            r = self.mc.dispute(self.account, self.job, contest, request)
            self.gas["dispute"] = r["gasUsed"]
            # The jury must be drawn within DRAW_WINDOW blocks: the disputer draws it at once
            # (from the pending block), the seats' keepers draw it too if this process dies here.
            _, r = self.mc.draw_jury(self.account, self.job, contest)
            self.gas["draw_jury"] = r["gasUsed"]
            self.timings["dispute"] = (time.perf_counter() - t) * 1000
            self._emit(ev.Disputed(self.job_id, self.job.jury_fee, Deadlines(params, self.job).court_length))
