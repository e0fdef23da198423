"""`Asker`: the consumer's entry point for one verified, paid query (what `mesh ask` runs; the CLI
only prints), and `settle_pending` for the jobs a query could not settle at once.

    offers = eligible(chain, discover(chain, model_hash), me, max_tokens, max_price)   # discovery.py
    receipt = Asker(chain, account).ask(messages, model_hash, offers, AskOptions(...))   # query.py phases

The phases (verify, open, fan out, compare, settle) are consumer/query.py's `Query`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio
from eth_account.signers.local import LocalAccount

from consumer.discovery import Offer, discover, eligible  # noqa: F401 — the consumer's API in one place
from consumer.journal import Journal
from consumer.query import AskOptions, Query
from consumer.receipt import Receipt
from mesh.chain import Chain
from mesh.errors import ChainError, QueryError
from mesh.market import MarketClient
from mesh.p2p import Node
from mesh.protocol import Sampling

__all__ = ["AskOptions", "Asker", "Offer", "Receipt", "discover", "eligible", "settle_pending"]


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

    def check_funds(self, amount: int) -> tuple[int, int]:
        """(missing balance, missing allowance) to escrow `amount`, after credit."""
        credit = self.mc.credit(self.account.address)
        from_wallet = max(0, amount - credit)
        balance = self.chain.balance(self.account.address)
        allowance = self.chain.allowance(self.account.address, self.chain.registry.address)
        return max(0, from_wallet - balance), max(0, from_wallet - allowance)

    def ask(self, messages: Sequence[tuple[str, str]], model_hash: bytes, offers: Sequence[Offer], opts: AskOptions,
            on_token: Callable[[str], None] | None = None) -> Receipt:
        sampling = Sampling(messages=tuple(messages), max_tokens=opts.max_tokens,
                            temperature_milli=opts.temperature_milli, seed=opts.seed)
        query = Query(self, sampling, model_hash, opts, on_token)
        trio.run(self._collect, query, self.rank(list(offers)))
        return query.settle()

    async def _collect(self, query: Query, ranked: list[Offer]) -> None:
        async with Node.start(bytes(self.account.key)) as node:
            verified = await query.verify(node, ranked)
            if len(verified) < 3:
                raise QueryError(f"only {len(verified)} provider(s) answered with a valid manifest; a verified query "
                                 "needs three", "retry later, or raise --max-price to reach more providers")
            query.assign(verified)
            await query.fan_out(node)


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
