"""The explorer's data: models and providers (price, stake, reputation, build, last seen, first
token), recent jobs with their agreement, payments and slashes, and jobs per minute. Built in a
worker thread from the consumer's ledger (indexed chain events, ledger/) and the gateway's own
catalog and observations; rebuilt at most every `MIN_INTERVAL` seconds however many pages poll.

Without a ledger the page still shows the catalog's providers and this gateway's own jobs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import trio

from meshmarket.mesh.errors import MeshError
from meshmarket.mesh.lifecycle import JobState
from meshmarket.mesh.market import OUTCOMES

log = logging.getLogger("meshmarket.gateway")

MIN_INTERVAL = 1.5
#: The ledger (observations in, chain events indexed) is brought up to date this often anyway.
LEDGER_EVERY = 10.0
SERIES_MINUTES = 30
_PAID = ("agreed", "provisional", "passed")


def agreement(status: str, seats: list) -> str:
    """'k/n' for a job row of the ledger: k seats backing the answer of n that delivered."""
    if status in ("open", "drawn"):
        return "pending"
    present = [s for s in seats if s.outcome != "missing" and (s.outcome is not None or s.output_hash is not None)]
    if status == "settled":
        k = sum(1 for s in present if s.outcome in _PAID)
    elif status == "refunded":
        k = 0
    else:  # contested or disputed: the largest group of equal outputs
        k = max(Counter((s.output_hash, s.token_count) for s in present).values(), default=0)
    return f"{k}/{len(present)}"


def _job_row(row: Any, models: dict[str, str], slashed: dict[str, int]) -> dict:
    tokens = Counter(s.token_count for s in row.seats if s.token_count is not None).most_common(1)
    return {"id": row.job_id, "time": row.opened_at, "model": models.get(row.model_hash, row.model_hash[:10] + "…"),
            "status": row.status, "outcome": row.outcome or row.status, "agreement": agreement(row.status, list(row.seats)),
            "tokens": tokens[0][0] if tokens else None, "paid": row.paid, "slashed": slashed.get(row.job_id, 0),
            "refund": row.refund, "local": row.local}


def _series(times: list[tuple[int, bool]], now: int) -> list[dict]:
    start = now - now % 60 - (SERIES_MINUTES - 1) * 60
    buckets = [{"t": start + 60 * i, "jobs": 0, "slashed": 0} for i in range(SERIES_MINUTES)]
    for t, slashed in times:
        k = (t - start) // 60
        if 0 <= k < SERIES_MINUTES:
            buckets[k]["jobs"] += 1
            buckets[k]["slashed"] += 1 if slashed else 0
    return buckets


def job_json(state: JobState) -> dict:
    """A job's state on-chain (GET /v1/meshmarket/jobs/{id})."""
    job, ev, contest = state.job, state.settled, state.contest
    seats = []
    for i in range(job.seat_count):
        seat = {"index": i, "address": job.seats[i], "price": job.prices[i]}
        if ev is not None:
            seat["paid"] = int(ev["paid"][i])
            seat["slashed"] = bool(int(ev["slashMask"]) >> i & 1)
            if seat["slashed"] and contest is not None:
                seat["slashed_amount"] = contest.locks[i]
        elif contest is not None:
            seat["provisional"] = bool(contest.provisional >> i & 1)
        seats.append(seat)
    status = ("closed" if ev is not None else "disputed" if state.disputer else "contested" if contest
              else "drawn" if job.drawn_at else "open")
    return {"job_id": "0x" + state.job_id.hex(), "status": status,
            "outcome": OUTCOMES[ev["outcome"]] if ev is not None else None,
            "refund": int(ev["refund"]) if ev is not None else None, "seats": seats,
            "disputer": state.disputer, "jurors": list(state.jurors)}


class Snapshots:
    """The explorer's snapshot, cached; the ledger's upkeep (observations, indexing)."""

    def __init__(self, backend: Any) -> None:
        """`backend`: the Dispatcher (its catalog, chain, selector, latency, recent jobs)."""
        self.b = backend
        self._snap: dict | None = None
        self._at = -1e9
        self._lock = trio.Lock()
        self._ledger = trio.CapacityLimiter(1)  # one thread at a time talks to the ledger

    async def get(self) -> dict:
        async with self._lock:
            if self._snap is None or trio.current_time() - self._at >= MIN_INTERVAL:
                local = self._local()
                self._snap = await trio.to_thread.run_sync(self._build, local, limiter=self._ledger)
                self._at = trio.current_time()
        return self._snap

    async def keep_ledger(self) -> None:
        """Record observations and index the chain every LEDGER_EVERY seconds (reputation stays
        current without a page open)."""
        while True:
            await trio.sleep(LEDGER_EVERY)
            await trio.to_thread.run_sync(self._sync, self.b.take_observations(), limiter=self._ledger)

    def _sync(self, observed: list) -> bool:
        sel = self.b.selector
        if sel is None:
            return False
        try:
            for provider, kind, value, job_id in observed:
                sel.observe(provider, kind, value, job_id=job_id)
            sel.sync()
            return True
        except MeshError as exc:
            log.warning("gateway: the ledger is not up to date: %s", exc)
            return False

    def _local(self) -> dict:
        """What the snapshot needs from the trio side, copied (the thread must not read live dicts)."""
        cat = self.b.catalog
        return {"models": [e.as_model() for e in cat.models()],
                "offers": [(e.id, o) for e in cat.models() for o in e.offers],
                "builds": {a: b for e in cat.models() for a, b in e.builds().items()},
                "names": {e.hash_hex: e.id for e in cat.entries.values()},
                "seen": dict(cat.last_seen), "latency": dict(self.b.latency), "recent": list(self.b.recent),
                "observed": self.b.take_observations()}

    def _build(self, local: dict) -> dict:
        now = time.time()
        synced = self._sync(local["observed"])
        out = {"models": local["models"], "time": int(now), "chain_time": int(now), "ledger": synced}
        try:
            out["chain_time"] = max(int(now), self.b.chain.latest_time())
        except Exception:  # noqa: BLE001 - the page shows wall time then
            pass
        try:
            out.update(self._from_ledger(local, out["chain_time"]) if synced else self._without_ledger(local))
        except MeshError as exc:
            log.warning("gateway: explorer data from the ledger failed: %s", exc)
            out.update(self._without_ledger(local))
        return out

    def _provider(self, local: dict, address: str, **fields: Any) -> dict:
        total, count = local["latency"].get(address, (0.0, 0))
        return {"address": address, "build": local["builds"].get(address) or None, "last_seen": local["seen"].get(address),
                "first_token_ms": round(total / count) if count else None, **fields}

    def _from_ledger(self, local: dict, chain_now: int) -> dict:
        sel = self.b.selector
        ledger = sel.ledger
        rows = ledger.providers(registered=True)
        scores = sel.reputation.scores([r.address for r in rows], time.time()) if rows else {}
        providers = [self._provider(local, r.address, model=local["names"].get(r.model_hash or "", "?"),
                                    model_hash=r.model_hash, price=r.price, stake=r.stake, free_stake=r.free_stake,
                                    slashed=r.slashed, jobs=r.jobs, reputation=round(scores[r.address].score, 3)
                                    if r.address in scores else None) for r in rows]
        slashed: dict[str, int] = {}
        for s in ledger.slashes(limit=200):
            slashed[s.job_id] = slashed.get(s.job_id, 0) + s.amount
        jobs = ledger.jobs(limit=300)
        series = _series([(j.opened_at, j.job_id in slashed) for j in jobs], chain_now)
        return {"providers": providers, "jobs": [_job_row(j, local["names"], slashed) for j in jobs[:50]],
                "series": {"jobs_per_minute": series}}

    def _without_ledger(self, local: dict) -> dict:
        providers = [self._provider(local, o.address, model=model, price=o.price, stake=None, free_stake=o.free_stake,
                                    slashed=None, jobs=None, reputation=None) for model, o in local["offers"]]
        jobs = [{"id": r["job_id"], "time": int(time.time()), "model": r.get("model"), "status": r.get("outcome"),
                 "outcome": r.get("outcome"), "agreement": r.get("agreement"), "tokens": None,
                 "paid": r.get("paid", 0), "slashed": sum(p.get("slashed", 0) for p in r.get("providers", [])),
                 "refund": r.get("refund", 0), "local": True} for r in local["recent"]]
        return {"providers": providers, "jobs": jobs, "series": None}
