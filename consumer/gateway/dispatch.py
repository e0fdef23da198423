"""The HTTP gateway's dispatcher: `Dispatcher` answers each OpenAI request with one verified, paid
query (consumer.ask.Asker.ask_on) on the gateway's warm libp2p node, chain client and catalog of
offers and manifests, and renders the query's events (consumer.query_events) as the stream's
text.

One request:
    resolve the model in the catalog (memory)              404 model_not_found
    check prompt + max_tokens against the pool's context    400 context_length_exceeded
    wait for a turn of the model's pool (see below)
    ask_on: open, draw, fan out, compare, settle           ERRORS: the error's code -> status
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

from meshmarket.consumer import query_events as ev
from meshmarket.consumer.ask import AskOptions, Asker
from meshmarket.consumer.gateway.backend import Completion, CompletionRequest, GatewayError, OnToken
from meshmarket.consumer.gateway.catalog import Catalog, ModelEntry
from meshmarket.consumer.gateway.lanes import JobChainClient, SerialChain
from meshmarket.consumer.gateway.receipts import (estimate_prompt_tokens, outcome_error, receipt_json, to_completion)
from meshmarket.consumer.gateway.snapshot import Snapshots, job_json
from meshmarket.consumer.gateway.streaming import StreamMode, StreamPolicy
from meshmarket.consumer.journal import Journal, PendingJob
from meshmarket.consumer.receipt import Receipt
from meshmarket.consumer.selection import Selector
from meshmarket.consumer.settlement import settle_pending
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import MeshError, ProtocolError
from meshmarket.mesh.lifecycle import job_state
from meshmarket.mesh.market import ZERO32
from meshmarket.mesh.p2p import Node
from meshmarket.mesh.protocol import Sampling

log = logging.getLogger("meshmarket.gateway")


@dataclass(frozen=True)
class HttpError:
    """How a MeshError code reaches an OpenAI client: status, error type and code, and the message
    around the error's own ({message}; {account}: the gateway's paying account)."""

    status: int
    type: str
    code: str
    template: str = "{message}"
    #: The request itself is at fault: the error names its prompt or messages as `param`.
    about_request: bool = False
    #: The client may send it again when no job was opened (nothing was spent, nothing is open).
    retryable: bool = False


_TOO_FEW = HttpError(503, "market_unavailable", "too_few_providers")
_CHAIN_DOWN = HttpError(503, "market_unavailable", "chain_unavailable", "The chain failed: {message}", retryable=True)
_NO_FUNDS = HttpError(402, "insufficient_quota", "insufficient_funds",
                      "The gateway's account {account} cannot pay this job's escrow: {message}")

#: The one table from the errors of a query (MeshError.code, mesh/errors.py) to HTTP. A code not in
#: it is UNKNOWN: the market failed in a way this gateway does not tell apart.
ERRORS: dict[str, HttpError] = {
    "context_overflow": HttpError(400, "invalid_request_error", "context_length_exceeded", about_request=True),
    "request_refused": HttpError(400, "invalid_request_error", "request_refused", about_request=True),
    "too_few_providers": _TOO_FEW,
    "price_cap_too_low": _TOO_FEW,
    "not_enough_stake": _TOO_FEW,
    "pool_cannot_seat_jury": _TOO_FEW,
    "insufficient_funds": _NO_FUNDS,
    "no_gas": HttpError(402, "insufficient_quota", "insufficient_funds",
                        "The gateway's account {account} cannot pay for gas: {message}"),
    "job_slots_full": HttpError(429, "rate_limit_exceeded", "too_many_open_jobs"),
    "reverted": HttpError(502, "provider_error", "chain_refused", "The market refused the job: {message}"),
    "chain_error": _CHAIN_DOWN,
    "node_unreachable": _CHAIN_DOWN,
    "wrong_chain": _CHAIN_DOWN,
    "not_deployed": _CHAIN_DOWN,
}
UNKNOWN = HttpError(502, "provider_error", "market_error", "The market failed: {message}")


def gateway_error(exc: MeshError, *, account: str, param: str, job_id: bytes | None, drawn: bool,
                  receipt: dict | None) -> GatewayError:
    """The OpenAI error for a query that failed with `exc`: status, type and code by the error's
    code (ERRORS); what it spent by how far its job got (`job_id` opened, `drawn`); `param` is the
    request's prompt field, named when the request itself is at fault."""
    h = ERRORS.get(exc.code, UNKNOWN)
    return GatewayError(h.status, h.type, h.code, h.template.format(message=exc.message, account=account),
                        param if h.about_request else None, spent=None if drawn else 0,
                        retryable=h.retryable and job_id is None, receipt=receipt)


@dataclass(frozen=True)
class DispatchSettings:
    """How the HTTP gateway uses the market; every default says why."""

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

    def __init__(self, journal: Journal, running: set[_Request]) -> None:
        self.root = journal.root
        self._running = running

    def pending(self) -> list[PendingJob]:
        busy = {r.client.job_id for r in self._running}
        return [p for p in super().pending() if p.job_id not in busy]


class Dispatcher:
    """consumer.gateway.backend.Backend over the real market: one paid query per request."""

    def __init__(self, chain: Chain, account: LocalAccount, node: Node, *,
                 settings: DispatchSettings = DispatchSettings(), selector: Selector | None = None,
                 journal: Journal | None = None) -> None:
        self.chain = SerialChain.of(chain)
        self.account = account
        self.node = node
        self.settings = settings
        self.catalog = Catalog(self.chain, node, settings.group)
        self.journal = journal or Journal()
        self.selector = selector
        self.running: set[_Request] = set()
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
                    lambda: settle_pending(self.chain, self.account, journal, on_event=lambda n: log.info(n.text)))
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
        request = _Request(self, req, on_token)
        async with self._limiter(entry):
            self.running.add(request)
            try:
                receipt = await request.run(entry, sampling, opts)
            finally:
                self.running.discard(request)
        return request.result(entry, receipt)

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


class _Request:
    """One HTTP request's query: its chain client (consumer.gateway.lanes.JobChainClient: the job it
    opened, its transactions), and the rendering of the query's events as the stream's text."""

    def __init__(self, dispatcher: Dispatcher, req: CompletionRequest, on_token: OnToken) -> None:
        self.d = dispatcher
        self.req = req
        self.on_token = on_token
        self.policy = StreamPolicy(dispatcher.settings.stream_mode) if req.stream else None
        self.client = JobChainClient(dispatcher.chain)

    def event(self, event: ev.QueryEvent) -> None:
        """The query's sink: every seat's tokens feed the stream policy, a failed seat may hand the
        stream to another; the rest is logged."""
        if isinstance(event, ev.SeatToken):
            self.d.catalog.seen(event.provider)
            self._release(self.policy.feed(event.seat, event.text) if self.policy else "")
        elif isinstance(event, ev.SeatFailed):
            self._release(self.policy.fail(event.seat) if self.policy else "")
            log.info("gateway: %s: seat #%d %s failed (%s)", self.req.request_id, event.seat, event.provider,
                     event.error.code)
        else:
            log.info("gateway: %s: %s", self.req.request_id, event)

    def _release(self, text: str) -> None:
        if text:
            self.on_token(text)

    async def run(self, entry: ModelEntry, sampling: Sampling, opts: AskOptions) -> Receipt:
        asker = Asker(self.d.chain, self.d.account, mc=self.client, journal=self.d.journal, observe=self.d.observe)
        try:
            return await asker.ask_on(self.d.node, sampling, entry.model_hash, entry.offers, opts, sink=self.event)
        except MeshError as exc:
            raise gateway_error(exc, account=self.d.account.address,
                                param="messages" if self.req.kind == "chat" else "prompt",
                                job_id=self.client.job_id, drawn=self.client.drawn, receipt=self._partial()) from None

    def _partial(self) -> dict | None:
        if self.client.job_id is None:
            return None
        return {"job_id": "0x" + self.client.job_id.hex(), "tx": self.client.txs, "settled": False}

    def result(self, entry: ModelEntry, receipt: Receipt) -> Completion:
        meshmarket = receipt_json(receipt, model=entry.id, txs=self.client.txs,
                                  stream_mode=self.d.settings.stream_mode if self.req.stream else None)
        self.d.recent.appendleft(meshmarket)
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
            self._release(rest)
        return to_completion(receipt, self.req, meshmarket)
