"""One verified, paid query: `ask()` is what `mesh ask` runs (the CLI only prints).

1. Discover providers for the model (the directory: registry events and current on-chain
   listings), keep those at or under the price cap with free stake for the job, rank them by
   reputation and price, and verify the best ones over libp2p: the signed manifest hashes to the
   registered manifest hash and its signer is the registered address, which is also the peer id
   Noise authenticated.
2. Open the job on-chain (escrow: credit first, then transferFrom).
3. Send the request to all three at once; stream the first provider's tokens as they arrive.
   A provider that cannot be reached, refuses, stalls or dies mid-stream is replaced on-chain by
   the next verified provider; without one, its share is refunded at settlement (after the
   delivery window) from the journal.
4. Compare and settle: the contract pays the majority, slashes a dissenter, refunds the rest.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio
from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD
from eth_utils import to_checksum_address

from consumer.client import Answer, fetch_manifest, run_job
from consumer.journal import Journal, PendingJob
from mesh.chain import Chain
from mesh.errors import ChainError, ProviderFailed, QueryError
from mesh.market import MarketClient, ResultClaim, job_id_for, new_salt
from mesh.p2p import Node, address_from_peer_id
from mesh.types import format_amount
from mesh.protocol import InferRequest, Job, Sampling

#: Providers verified beyond the three needed, ready to step in for a failing one.
SPARES = 2
MANIFEST_TIMEOUT = 5.0


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


@dataclass
class SlotReport:
    index: int
    provider: str
    price: int
    tokens: int = 0
    paid: int = 0
    slashed: int = 0
    agreed: bool = False
    status: str = ""
    first_token_ms: float = math.nan
    total_ms: float = math.nan
    replaced: list[str] = field(default_factory=list)


@dataclass
class Receipt:
    job_id: bytes
    model_hash: bytes
    agreement: str  # "3/3", "2/3", "none", or "pending" when settlement must wait
    text: str
    slots: list[SlotReport]
    escrow: int
    refund: int
    gas: dict[str, int]
    timings_ms: dict[str, float]
    settled: bool
    #: What was shown while streaming; differs from `text` when that provider failed or was outvoted.
    streamed: str = ""

    @property
    def paid(self) -> int:
        return sum(s.paid for s in self.slots)

    def as_dict(self) -> dict:
        return {
            "job_id": "0x" + self.job_id.hex(), "model_hash": "0x" + self.model_hash.hex(),
            "agreement": self.agreement, "settled": self.settled, "text": self.text,
            "providers": [{"index": s.index, "address": s.provider, "price": s.price, "tokens": s.tokens,
                           "paid": s.paid, "slashed": s.slashed, "agreed": s.agreed, "status": s.status,
                           "first_token_ms": None if math.isnan(s.first_token_ms) else round(s.first_token_ms, 1),
                           "replaced": s.replaced} for s in self.slots],
            "escrow": self.escrow, "paid": self.paid, "refund": self.refund, "gas": self.gas,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }


# ------------------------------------------------------------------------------ discovery

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


# ------------------------------------------------------------------------------ the query

@dataclass
class AskOptions:
    max_tokens: int = 128
    max_price: int = 100
    temperature_milli: int = 0
    seed: int = 0
    first_token_timeout: float = 30.0
    token_timeout: float = 10.0


class Asker:
    def __init__(self, chain: Chain, account: LocalAccount, *, rank: Callable[[list[Offer]], list[Offer]] | None = None,
                 journal: Journal | None = None, observe: Callable[[str, str, float | None], None] | None = None,
                 on_event: Callable[[str], None] | None = None,
                 on_any_token: Callable[[int, str, str], None] | None = None) -> None:
        self.chain = chain
        #: Sees every provider's tokens (slot, provider address, text), not only the streamed one.
        self.on_any_token = on_any_token
        self.account = account
        self.mc = MarketClient(chain)
        self.rank = rank or (lambda offers: sorted(offers, key=lambda o: (o.price, o.address)))
        self.journal = journal or Journal()
        self.observe = observe or (lambda provider, kind, value: None)
        self.on_event = on_event or (lambda msg: None)

    # -- funds

    def check_funds(self, amount: int) -> tuple[int, int]:
        """(missing balance, missing allowance) to escrow `amount`, after credit."""
        credit = self.mc.credit(self.account.address)
        from_wallet = max(0, amount - credit)
        balance = self.chain.balance(self.account.address)
        allowance = self.chain.allowance(self.account.address, self.chain.registry.address)
        return max(0, from_wallet - balance), max(0, from_wallet - allowance)

    # -- main entry

    def ask(self, messages: Sequence[tuple[str, str]], model_hash: bytes, offers: Sequence[Offer], opts: AskOptions,
            on_token: Callable[[str], None] | None = None) -> Receipt:
        ranked = self.rank(list(offers))
        sampling = Sampling(messages=tuple(messages), max_tokens=opts.max_tokens,
                            temperature_milli=opts.temperature_milli, seed=opts.seed)
        return trio.run(self._ask, ranked, model_hash, sampling, opts, on_token)

    async def _verify(self, node: Node, offers: list[Offer], model_hash: bytes, need: int) -> list[Offer]:
        """Fetch and check manifests, best-ranked first, until `need` verified offers (or none left)."""
        verified: list[Offer] = []
        queue = list(offers)
        while queue and len(verified) < need:
            batch, queue = queue[: need - len(verified)], queue[need - len(verified):]
            ok: dict[str, Offer] = {}

            async def check(o: Offer) -> None:
                t0 = time.perf_counter()
                try:
                    if address_from_peer_id(o.peer_id) != o.address:
                        raise ProviderFailed("wrong_peer", "endpoint peer id is not the registered address")
                    m, digest = await fetch_manifest(node, o.peer_id, o.addrs, MANIFEST_TIMEOUT)
                    if digest != o.manifest_hash:
                        raise ProviderFailed("stale", "manifest differs from the registered one")
                    if bytes.fromhex(m.model_sha256[2:]) != model_hash:
                        raise ProviderFailed("stale", "manifest is for another model")
                    ok[o.address] = o
                    self.observe(o.address, "connect_ms", (time.perf_counter() - t0) * 1000)
                except ProviderFailed as exc:
                    self.observe(o.address, "connect_failure", None)
                    self.on_event(f"skipping {o.address[:10]}…: {exc}")
                except Exception as exc:  # a malformed peer must never abort discovery
                    self.observe(o.address, "connect_failure", None)
                    self.on_event(f"skipping {o.address[:10]}…: {exc!r}")

            async with trio.open_nursery() as n:
                for o in batch:
                    n.start_soon(check, o)
            verified += [o for o in batch if o.address in ok]
        return verified

    async def _ask(self, ranked: list[Offer], model_hash: bytes, sampling: Sampling, opts: AskOptions,
                   on_token: Callable[[str], None] | None) -> Receipt:
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        gas: dict[str, int] = {}
        async with Node.start(bytes(self.account.key)) as node:
            verified = await self._verify(node, ranked, model_hash, 3 + SPARES)
            if len(verified) < 3:
                raise QueryError(f"only {len(verified)} provider(s) answered with a valid manifest; a verified query needs three",
                                    "retry later, or raise --max-price to reach more providers")
            timings["discover"] = (time.perf_counter() - t_start) * 1000
            chosen, spares = verified[:3], verified[3:]
            salt = new_salt()
            job_id = job_id_for(self.account.address, salt)
            opened = trio.Event()
            box: dict = {}

            async def open_on_chain() -> None:
                t = time.perf_counter()
                try:
                    _, state.job, receipt = await trio.to_thread.run_sync(
                        lambda: self.mc.open_job(self.account, model_hash, sampling.prompt_hash(model_hash),
                                                 sampling.max_tokens, max(o.price for o in verified),
                                                 [o.address for o in chosen], salt=salt, approve=False))
                    timings["open"] = (time.perf_counter() - t) * 1000
                    gas["open"] = receipt["gasUsed"]
                    pending.job = state.job
                    self.journal.save(pending)
                    self.on_event(f"job 0x{job_id.hex()} opened: escrow {format_amount(state.job.escrow)}")
                except Exception as exc:  # reported once the slots have stopped
                    box["error"] = exc
                finally:
                    opened.set()  # after state.job is set: the slots read it as soon as this fires

            state = _Run(job_id, None, chosen, spares)
            slots = [SlotReport(i, o.address, o.price) for i, o in enumerate(chosen)]
            pending = PendingJob(job_id, None)

            async def request_for(i: int) -> InferRequest:
                """The slot's request, once the job is open (the stream was opened meanwhile)."""
                await opened.wait()
                if "error" in box:
                    raise _JobNotOpened()
                return InferRequest(job_id, state.job, i, sampling)

            t_gen = time.perf_counter()
            streamer: list[int] = []  # the slot whose tokens are shown: the first to produce one
            streamed: list[str] = []

            def token_cb(i: int):
                def cb(text: str) -> None:
                    if self.on_any_token:
                        self.on_any_token(i, state.current[i].address, text)
                    if not streamer:
                        streamer.append(i)
                        timings["first_token"] = (time.perf_counter() - t_start) * 1000
                    if streamer[0] == i:
                        streamed.append(text)
                        if on_token:
                            on_token(text)
                return cb

            async def run_slot(i: int) -> None:
                first = True
                while True:
                    offer = state.current[i]
                    req = (lambda: request_for(i)) if first else InferRequest(job_id, state.job, i, sampling)
                    first = False
                    try:
                        answer: Answer = await run_job(
                            node, offer.peer_id, offer.addrs, req, expected=offer.address,
                            chain_id=self.chain.chain_id, market=self.chain.market.address, on_token=token_cb(i),
                            first_token_timeout=opts.first_token_timeout, token_timeout=opts.token_timeout)
                    except _JobNotOpened:
                        return
                    except ProviderFailed as exc:
                        if not opened.is_set():  # a provider failing before the job opened: wait for it
                            await opened.wait()
                        if "error" in box:
                            return
                        self.observe(offer.address, "timeout" if exc.code == "timeout" else "failure", None)
                        slots[i].status = f"failed ({exc.code})"
                        self.on_event(f"provider #{i} {offer.address[:10]}… failed: {exc}")
                        replacement = await state.replace(i, self)
                        if replacement is None:
                            return
                        gas[f"replace_{i}_{len(slots[i].replaced)}"] = state.last_gas
                        slots[i].replaced.append(offer.address)
                        slots[i].provider, slots[i].price = replacement.address, replacement.price
                        self.on_event(f"provider #{i} replaced by {replacement.address[:10]}…")
                        pending.job = state.job
                        self.journal.save(pending)
                        continue
                    state.answers[i] = answer
                    slots[i].first_token_ms = answer.first_token_ms
                    slots[i].total_ms = answer.total_ms
                    slots[i].tokens = answer.result.token_count
                    slots[i].status = "delivered"
                    self.observe(offer.address, "first_token_ms", answer.first_token_ms)
                    pending.results[i] = answer.claim
                    self.journal.save(pending)
                    return

            # Streams to the three providers open while the job is being opened on-chain.
            async with trio.open_nursery() as n:
                n.start_soon(open_on_chain)
                for i in range(3):
                    n.start_soon(run_slot, i)
            if "error" in box:
                raise box["error"]
            timings["generate"] = (time.perf_counter() - t_gen) * 1000

        job = state.job
        answers = state.answers
        texts = {i: a.text for i, a in answers.items()}
        votes = Counter((a.result.output_hash, a.result.token_count) for a in answers.values())
        top, count = votes.most_common(1)[0] if votes else (None, 0)
        majority_text = next((a.text for a in answers.values() if (a.result.output_hash, a.result.token_count) == top), "")
        if count < 2:
            majority_text = ""
        text = majority_text or (texts[min(texts)] if texts else "")

        results: list[ResultClaim | None] = [answers[i].claim if i in answers else None for i in range(3)]
        settled = False
        refund = 0
        if len(answers) == 3:
            t = time.perf_counter()
            r = await trio.to_thread.run_sync(lambda: self.mc.settle(self.account, job_id, job, results))
            timings["settle"] = (time.perf_counter() - t) * 1000
            gas["settle"] = r["gasUsed"]
            ev = self.mc.settled_event(r)
            slashed = {to_checksum_address(e["args"]["provider"]): int(e["args"]["amount"])
                       for e in self.chain.registry.events.Slashed().process_receipt(r, errors=DISCARD)}
            for i, s in enumerate(slots):
                s.paid, s.agreed = int(ev["paid"][i]), int(ev["paid"][i]) > 0
                s.slashed = slashed.get(s.provider, 0)
                if s.slashed:
                    s.status = "slashed (disagreed)"
            refund = int(ev["refund"])
            settled = True
            self.journal.remove(job_id)
            agreement = {3: "3/3", 2: "2/3"}.get(count, "none")
        else:
            agreement = "pending"
            for i, s in enumerate(slots):
                if i not in answers:
                    s.status = s.status or "no result"
            deadline = job.opened_at + self.chain.deployment.params.delivery_window
            self.on_event(f"only {len(answers)} result(s): the job settles after the delivery window (unix {deadline}); "
                          "run `mesh settle` then (or any later `mesh ask` does it)")
        timings["total"] = (time.perf_counter() - t_start) * 1000
        return Receipt(job_id, model_hash, agreement, text, slots, job.escrow, refund, gas, timings, settled,
                       "".join(streamed))


class _JobNotOpened(Exception):
    """openJob failed: the slots stop; the error itself is raised by the query."""


class _Run:
    """Mutable state of one query: the current job (it changes with each replacement)."""

    def __init__(self, job_id: bytes, job: Job | None, chosen: list[Offer], spares: list[Offer]) -> None:
        self.job_id = job_id
        self.job = job
        self.current = list(chosen)
        self.spares = list(spares)
        self.answers: dict[int, Answer] = {}
        self.lock = trio.Lock()
        self.last_gas = 0

    async def replace(self, i: int, asker: Asker) -> Offer | None:
        async with self.lock:  # each replacement changes the job hash: one at a time
            while self.spares:
                spare = self.spares.pop(0)
                try:
                    new_job, r = await trio.to_thread.run_sync(
                        lambda: asker.mc.replace_provider(asker.account, self.job_id, self.job, i, spare.address))
                except ChainError as exc:
                    asker.on_event(f"cannot replace with {spare.address[:10]}…: {exc}")
                    continue
                self.job, self.last_gas = new_job, r["gasUsed"]
                self.current[i] = spare
                return spare
            return None


def settle_pending(chain: Chain, account: LocalAccount, journal: Journal | None = None,
                   on_event: Callable[[str], None] | None = None) -> list[dict]:
    """Settle or finalize journaled jobs whose time has come; drop those closed meanwhile."""
    journal = journal or Journal()
    say = on_event or (lambda msg: None)
    mc = MarketClient(chain)
    p = chain.deployment.params
    now = chain.latest_time()
    done = []
    for pj in journal.pending():
        if pj.job.consumer != account.address:
            continue
        if not mc.is_open(pj.job_id):
            journal.remove(pj.job_id)
            continue
        opened = pj.job.opened_at
        results = [pj.results.get(i) for i in range(3)]
        try:
            if now < opened + p.settle_window and (len(pj.results) == 3 or now >= opened + p.delivery_window):
                r = mc.settle(account, pj.job_id, pj.job, results)
            elif now >= opened + p.settle_window + p.commit_window + p.reveal_window:
                r = mc.finalize(account, pj.job_id, pj.job)
            else:
                continue
        except ChainError as exc:
            say(f"job 0x{pj.job_id.hex()[:12]}…: {exc}")
            continue
        ev = mc.settled_event(r)
        journal.remove(pj.job_id)
        say(f"job 0x{pj.job_id.hex()[:12]}… settled: paid {sum(ev['paid'])}, refund {ev['refund']} base units")
        done.append({"job_id": "0x" + pj.job_id.hex(), "paid": [int(x) for x in ev["paid"]], "refund": int(ev["refund"])})
    return done
