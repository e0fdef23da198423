"""The market behind the gateway: `MarketBackend` answers each OpenAI request with one verified,
paid query (consumer.ask.Asker.ask_on) on the gateway's warm libp2p node, chain connection and
catalog of offers and manifests.

One request:
    resolve the model in the catalog (memory)              404 model_not_found
    check prompt + max_tokens against the pool's context    400 context_length_exceeded
    wait for a turn of the model's pool (see below)
    ask_on: open, draw, fan out, compare, settle           503 / 402 before any escrow
    map the receipt (consumer.gateway.receipts)             502 when two seats did not agree

A pool serves a limited number of jobs at once: a provider runs one job at a time and refuses
more ("busy"), and a job's three seats are drawn at random from the pool, so two jobs of one
consumer collide as soon as the pool is small. The backend runs at most `jobs_in_flight` jobs per
model (default a quarter of the pool, at least one) and queues the rest: on the three-to-five
provider devnet, concurrent requests are served one after the other, and all of them succeed.

In the background: the catalog refresh, `settle_pending` for the jobs a query could not close
(a missing seat, a contest: it is the gateway's account that must move them on), and the ledger
(observations of the providers, indexed chain events for the explorer).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import trio
from eth_account.signers.local import LocalAccount

from meshmarket.consumer.ask import AskOptions, Asker
from meshmarket.consumer.gateway.backend import Completion, CompletionRequest, GatewayError, OnToken
from meshmarket.consumer.gateway.catalog import Catalog, ModelEntry
from meshmarket.consumer.gateway.lanes import QueryMarket, SerialChain
from meshmarket.consumer.gateway.receipts import (estimate_prompt_tokens, outcome_error, receipt_json, to_completion)
from meshmarket.consumer.gateway.snapshot import Snapshots, job_json
from meshmarket.consumer.gateway.streaming import StreamMode, StreamPolicy
from meshmarket.consumer.journal import Journal, PendingJob
from meshmarket.consumer.receipt import Receipt
from meshmarket.consumer.selection import Selector
from meshmarket.consumer.settlement import settle_pending
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import ChainError, ContractReverted, MeshError, ProtocolError, QueryError
from meshmarket.mesh.market import ZERO32, job_state
from meshmarket.mesh.p2p import Node
from meshmarket.mesh.protocol import Sampling

log = logging.getLogger("meshmarket.gateway")

_NO_FUNDS = {"ERC20InsufficientBalance", "ERC20InsufficientAllowance"}


@dataclass(frozen=True)
class MarketSettings:
    """How the gateway uses the market; every default says why."""

    #: The pool: ZERO32 the open market, else a private group (mesh.market.group_id(name)).
    group: bytes = ZERO32
    #: What a stream shows before the seats are compared (consumer.gateway.streaming).
    stream_mode: StreamMode = "agreed"
    #: Offers and manifests change when providers come and go: seconds between refreshes.
    refresh_every: float = 10.0
    #: Jobs left open (a missing seat, a contest) can move on only after windows of minutes.
    settle_every: float = 30.0
    #: Jobs at once per model; None: a quarter of the pool, at least one (see the module's doc).
    jobs_in_flight: int | None = None
    #: The consumer's defaults (consumer.query.AskOptions).
    min_pool: int = 6
    first_token_timeout: float = 30.0
    token_timeout: float = 10.0


class _OpenJobs(Journal):
    """The journal as settle_pending sees it from the gateway: without the jobs of running requests
    (their query settles them; two settlements would race)."""

    def __init__(self, journal: Journal, running: set) -> None:
        self.root = journal.root
        self._running = running

    def pending(self) -> list[PendingJob]:
        busy = {q.market.job_id for q in self._running}
        return [p for p in super().pending() if p.job_id not in busy]


class MarketBackend:
    """consumer.gateway.backend.Backend over the real market."""

    def __init__(self, chain: Chain, account: LocalAccount, node: Node, *, settings: MarketSettings = MarketSettings(),
                 selector: Selector | None = None, journal: Journal | None = None) -> None:
        self.chain = SerialChain.of(chain)
        self.account = account
        self.node = node
        self.settings = settings
        self.catalog = Catalog(self.chain, node, settings.group)
        self.journal = journal or Journal()
        self.selector = selector
        self.running: set[_Query] = set()
        self._limiters: dict[bytes, trio.CapacityLimiter] = {}
        self._observed: list[tuple[str, str, float | None, bytes]] = []
        #: provider -> (sum of first-token ms, count), as this gateway saw them
        self.latency: dict[str, tuple[float, int]] = {}
        #: this gateway's last jobs (the explorer's fallback when there is no ledger)
        self.recent: deque[dict] = deque(maxlen=50)
        self.snapshots = Snapshots(self)

    # -------------------------------------------------------------------------- background

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """The background tasks; ready once the catalog has been read once."""
        if self.selector is not None:
            await trio.to_thread.run_sync(self._ledger_start)
        async with trio.open_nursery() as n:
            await n.start(self.catalog.run, self.settings.refresh_every)
            n.start_soon(self._settle_loop)
            n.start_soon(self.snapshots.keep_ledger)
            task_status.started()

    def _ledger_start(self) -> None:
        """This account's jobs are this node's own (they anchor reputation); index what is new."""
        try:
            self.selector.ledger.add_local_account(self.account.address)
            self.selector.sync()
        except MeshError as exc:
            log.warning("gateway: the ledger is not available (%s); the explorer shows the chain only", exc)

    async def _settle_loop(self) -> None:
        journal = _OpenJobs(self.journal, self.running)
        while True:
            try:
                done = await trio.to_thread.run_sync(
                    lambda: settle_pending(self.chain, self.account, journal, on_event=log.info))
                if done:
                    log.info("gateway: moved on %d open job(s)", len(done))
            except Exception as exc:  # noqa: BLE001 - retried at the next round
                log.warning("gateway: settling open jobs failed: %s", exc)
            await trio.sleep(self.settings.settle_every)

    def observe(self, provider: str, kind: str, value: float | None, job_id: bytes) -> None:
        """What a query saw of a provider: kept for the explorer, recorded in the ledger later (a
        database write does not belong in the loop that streams)."""
        if kind == "first_token_ms" and value is not None and value == value:
            total, count = self.latency.get(provider, (0.0, 0))
            self.latency[provider] = (total + value, count + 1)
        self._observed.append((provider, kind, value, job_id))

    def take_observations(self) -> list[tuple[str, str, float | None, bytes]]:
        out, self._observed = self._observed, []
        return out

    # -------------------------------------------------------------------------- Backend

    async def models(self) -> list[dict]:
        return [e.as_model() for e in self.catalog.models()]

    async def market(self) -> dict:
        return await self.snapshots.get()

    async def job(self, job_id: str) -> dict:
        try:
            raw = bytes.fromhex(job_id.removeprefix("0x"))
        except ValueError:
            raw = b""
        state = await trio.to_thread.run_sync(lambda: job_state(self.chain, raw)) if len(raw) == 32 else None
        if state is None:
            raise GatewayError(404, "invalid_request_error", "job_not_found",
                               f"No job {job_id} on this market's chain.", "job_id")
        return job_json(state)

    async def complete(self, req: CompletionRequest, on_token: OnToken) -> Completion:
        entry = await self._entry(req.model)
        _check_context(entry, req)
        sampling = _sampling(req)
        opts = AskOptions(max_tokens=req.max_tokens, max_price=req.max_price, temperature_milli=req.temperature_milli,
                          top_p_milli=req.top_p_milli, seed=req.seed, stop=req.stop, group=self.settings.group,
                          first_token_timeout=self.settings.first_token_timeout,
                          token_timeout=self.settings.token_timeout, max_seats=req.max_seats, dispute=req.dispute,
                          min_pool=self.settings.min_pool)
        query = _Query(self, req, on_token)
        async with self._limiter(entry):
            self.running.add(query)
            try:
                receipt = await query.run(entry, sampling, opts)
            finally:
                self.running.discard(query)
        return query.result(entry, receipt)

    # -------------------------------------------------------------------------- helpers

    async def _entry(self, model: str) -> ModelEntry:
        entry = self.catalog.resolve(model)
        if entry is None:  # maybe new since the last refresh
            with trio.move_on_after(5):
                await self.catalog.refresh()
            entry = self.catalog.resolve(model)
        if entry is None:
            known = ", ".join(e.id for e in self.catalog.models()) or "none right now"
            raise GatewayError(404, "invalid_request_error", "model_not_found",
                               f"The model '{model}' is not offered on the market (models: {known}). "
                               "GET /v1/models lists them.", "model", spent=0)
        return entry

    def _limiter(self, entry: ModelEntry) -> trio.CapacityLimiter:
        want = self.settings.jobs_in_flight or max(1, len(entry.offers) // 4)
        limiter = self._limiters.setdefault(entry.model_hash, trio.CapacityLimiter(want))
        if limiter.total_tokens != want:
            limiter.total_tokens = want
        return limiter


def _check_context(entry: ModelEntry, req: CompletionRequest) -> None:
    estimate = estimate_prompt_tokens(req)
    if estimate + req.max_tokens > entry.context_length:
        raise GatewayError(
            400, "invalid_request_error", "context_length_exceeded",
            f"This model's context is {entry.context_length} tokens; the prompt is about {estimate} tokens "
            f"({req.prompt_bytes:,} bytes) and max_tokens asks for {req.max_tokens}. Shorten the prompt or lower "
            "max_tokens.", "messages" if req.kind == "chat" else "prompt", spent=0)


def _sampling(req: CompletionRequest) -> Sampling:
    wire = {"max_tokens": req.max_tokens, "temperature_milli": req.temperature_milli, "top_p_milli": req.top_p_milli,
            "seed": req.seed, "stop": list(req.stop)}
    if req.messages is not None:
        wire["messages"] = [{"role": r, "content": c} for r, c in req.messages]
    else:
        wire["prompt"] = req.prompt
    try:
        return Sampling.parse(wire, "request")
    except ProtocolError as exc:
        raise GatewayError(400, "invalid_request_error", "invalid_value", str(exc), None, spent=0) from None


class _Query:
    """One request's query: its callbacks (every seat's tokens, failures) and market client."""

    def __init__(self, backend: MarketBackend, req: CompletionRequest, on_token: OnToken) -> None:
        self.b = backend
        self.req = req
        self.on_token = on_token
        self.policy = StreamPolicy(backend.settings.stream_mode) if req.stream else None
        self.market = QueryMarket(backend.chain)
        self.seats_of: dict[str, set[int]] = {}

    def _token(self, seat: int, provider: str, text: str) -> None:
        self.seats_of.setdefault(provider, set()).add(seat)
        self.b.catalog.seen(provider)
        if self.policy is not None:
            out = self.policy.feed(seat, text)
            if out:
                self.on_token(out)

    def _observe(self, provider: str, kind: str, value: float | None, job_id: bytes) -> None:
        self.b.observe(provider, kind, value, job_id)
        if self.policy is not None and kind in ("failure", "timeout"):
            for seat in self.seats_of.get(provider, ()):
                out = self.policy.fail(seat)
                if out:
                    self.on_token(out)

    def _event(self, msg: str) -> None:
        log.info("gateway: %s: %s", self.req.request_id, msg)

    async def run(self, entry: ModelEntry, sampling: Sampling, opts: AskOptions) -> Receipt:
        asker = Asker(self.b.chain, self.b.account, journal=self.b.journal, observe=self._observe,
                      on_event=self._event, on_any_token=self._token)
        asker.mc = self.market  # this query's client: slot choice under the lock, tx hashes
        try:
            return await asker.ask_on(self.b.node, sampling, entry.model_hash, entry.offers, opts)
        except QueryError as exc:
            if self.market.drawn:  # the seats refused the request itself (consumer.query.REQUEST_FAULTS)
                code = "context_length_exceeded" if "context" in str(exc) else "request_refused"
                raise GatewayError(400, "invalid_request_error", code, str(exc),
                                   "messages" if self.req.kind == "chat" else "prompt", receipt=self._partial()) from None
            raise GatewayError(503, "market_unavailable", "too_few_providers", str(exc), None, spent=0) from None
        except ContractReverted as exc:
            raise self._reverted(exc) from None
        except ChainError as exc:
            raise GatewayError(503, "market_unavailable", "chain_unavailable", f"The chain failed: {exc}", None,
                               spent=None if self.market.drawn else 0, retryable=not self.market.job_id,
                               receipt=self._partial()) from None

    def _reverted(self, exc: ContractReverted) -> GatewayError:
        spent = None if self.market.drawn else 0
        if exc.name in _NO_FUNDS:
            return GatewayError(402, "insufficient_quota", "insufficient_funds",
                                f"The gateway's account {self.b.account.address} cannot pay this job's escrow: {exc}",
                                None, spent=spent, receipt=self._partial())
        if exc.name == "NotEnoughProviders":
            return GatewayError(503, "market_unavailable", "too_few_providers", str(exc), None, spent=spent,
                                receipt=self._partial())
        if exc.name == "SlotBusy" or "jobs open" in str(exc):
            return GatewayError(429, "rate_limit_exceeded", "too_many_open_jobs", str(exc), None, spent=spent)
        return GatewayError(502, "provider_error", "chain_refused", f"The market refused the job: {exc}", None,
                            spent=spent, receipt=self._partial())

    def _partial(self) -> dict | None:
        if self.market.job_id is None:
            return None
        return {"job_id": "0x" + self.market.job_id.hex(), "tx": self.market.txs, "settled": False}

    def result(self, entry: ModelEntry, receipt: Receipt) -> Completion:
        meshmarket = receipt_json(receipt, model=entry.id, txs=self.market.txs,
                                  stream_mode=self.b.settings.stream_mode if self.req.stream else None)
        self.b.recent.appendleft(meshmarket)
        error = outcome_error(receipt, meshmarket)
        if error is not None:
            raise error
        if self.policy is not None:
            rest = self.policy.finish(receipt.text)
            if rest is None:
                meshmarket["text"] = receipt.text
                raise GatewayError(502, "provider_error", "stream_outvoted",
                                   "The text streamed so far is not the answer the seats verified (it is in "
                                   "meshmarket.text): discard what was shown.", None, spent=meshmarket["spent"],
                                   receipt=meshmarket)
            if rest:
                self.on_token(rest)
        return to_completion(receipt, self.req, meshmarket)
