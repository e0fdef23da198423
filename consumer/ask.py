"""`Asker`: the consumer's entry point for one verified, paid query (what `mesh ask` and the HTTP
gateway run; they only render its events and its receipt).

    offers = discover(chain, model_hash, group)                  # consumer/discovery.py
    receipt = Asker(chain, account).ask(messages, model_hash, offers, AskOptions(...), sink=print)

The query's phases (open, draw, fan out, compare, settle) are consumer/query.py's `Query`; what
happens on the way reaches `sink` as typed events (consumer/query_events.py); jobs a query could
not close are moved on by consumer/settlement.py's `settle_pending`.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from eth_account.signers.local import LocalAccount

from meshmarket.consumer import query_events as events
from meshmarket.consumer.discovery import Offer, check_jury, discover, eligible
from meshmarket.consumer.query_events import EventSink, Observer
from meshmarket.consumer.journal import Journal
from meshmarket.consumer.query import AskOptions, Query
from meshmarket.consumer.receipt import Receipt
from meshmarket.consumer.settlement import settle_pending
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import sole_error
from meshmarket.mesh.market import ZERO32, MarketClient
from meshmarket.mesh.p2p import Node
from meshmarket.mesh.protocol import Sampling

__all__ = ["AskOptions", "Asker", "Offer", "Receipt", "discover", "eligible", "settle_pending"]


class Asker:
    """One account's queries: `account` pays through `mc` (a MarketClient on `chain`, or the
    caller's own, e.g. the HTTP gateway's per-request client); `journal` keeps unclosed jobs;
    `observe` records what each seat did (consumer.query_events.Observer; Selector.observe for
    the ledger)."""

    def __init__(self, chain: Chain, account: LocalAccount, *, mc: MarketClient | None = None,
                 journal: Journal | None = None, observe: Observer | None = None) -> None:
        self.chain = chain
        self.account = account
        self.mc = mc or MarketClient(chain)
        self.journal = journal or Journal()
        self.observe = observe or events.observe_nothing

    def check_funds(self, amount: int) -> tuple[int, int]:
        """(missing balance, missing allowance) to escrow `amount`, after credit."""
        credit = self.mc.credit(self.account.address)
        from_wallet = max(0, amount - credit)
        balance = self.chain.balance(self.account.address)
        allowance = self.chain.allowance(self.account.address, self.chain.registry.address)
        return max(0, from_wallet - balance), max(0, from_wallet - allowance)

    def sampling(self, messages: Sequence[tuple[str, str]], opts: AskOptions) -> Sampling:
        """The request, checked as a provider will check it (a bad one costs nothing)."""
        return Sampling.parse({"messages": [{"role": r, "content": c} for r, c in messages],
                               "max_tokens": opts.max_tokens, "temperature_milli": opts.temperature_milli,
                               "top_p_milli": opts.top_p_milli, "seed": opts.seed, "stop": list(opts.stop)}, "request")

    def ask(self, messages: Sequence[tuple[str, str]], model_hash: bytes, offers: Sequence[Offer], opts: AskOptions,
            sink: EventSink = events.ignore) -> Receipt:
        """One paid query, on a libp2p node of its own (the CLI). `offers`: the pool's current
        offers (discover()); the draw may seat any of those eligible; `sink` gets its events."""
        async def run() -> Receipt:
            async with Node.start(bytes(self.account.key)) as node:
                return await self.ask_on(node, self.sampling(messages, opts), model_hash, offers, opts, sink)

        try:
            return trio.run(run)
        except BaseExceptionGroup as group:
            raise sole_error(group) from None

    async def ask_on(self, node: Node, sampling: Sampling, model_hash: bytes, offers: Sequence[Offer],
                     opts: AskOptions, sink: EventSink = events.ignore) -> Receipt:
        """One paid query on a running node, inside the caller's trio loop (the HTTP gateway keeps one
        node for all its requests). Eligibility is checked first, so a query that cannot be drawn
        costs nothing; the chain's calls run in worker threads."""
        offers = [o for o in offers if o.group == opts.group]  # the draw seats only the job's own pool
        eligible(self.chain, offers, self.account.address, opts.max_tokens, opts.max_price)
        fallback: Sequence[Offer] = ()
        if opts.min_pool and opts.group != ZERO32:  # a mesh's jury falls back on the open market
            fallback = await trio.to_thread.run_sync(discover, self.chain, model_hash, ZERO32)
        check_jury(self.chain, offers, self.account.address, opts.min_pool, fallback)
        query = Query(self.chain, self.mc, self.account, self.journal, sampling, model_hash, opts,
                      {o.address: o for o in offers}, observe=self.observe, sink=sink)
        return await query.run(node)
