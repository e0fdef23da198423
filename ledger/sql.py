"""`SqlLedger`: the `Ledger` on SQLAlchemy, for SQLite and PostgreSQL alike.

Owns how chain events become rows (`_BatchWriter`): a batch of logs is applied in memory over the
rows it touches, then written with bulk INSERTs and UPDATEs, and the cursor moves in the same
transaction, so a crash leaves either the whole batch or none of it. The rules mirror the
contracts: stake locks use the registry's lockFor, escrow is maxTokens * sum(prices), and each
provider's outcome in a job is derived from JobSettled (docs/LEDGER.md, "Outcomes").
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mesh.errors import LedgerError

from ledger.models import (
    CHAIN_TABLES,
    Base,
    EventLog,
    IndexerCursor,
    Job,
    JobSlot,
    Manifest,
    Observation,
    Payment,
    Peer,
    Provider,
    ProviderReputation,
    Refund,
    Replacement,
    Result,
    Slash,
)
from ledger.records import (
    OBSERVATION_KINDS,
    BatchResult,
    ChainEvent,
    ChainIdentity,
    Cursor,
    EarningsRow,
    JobProvider,
    JobRow,
    ManifestRow,
    PeerRow,
    ProviderRow,
    RegistryParams,
    SlashRow,
    checksum,
)
from ledger.evidence import COUNTERS, DEFAULT_HALF_LIFE_S, Evidence
from ledger.store import Ledger
from mesh.market import OUTCOME_MAJORITY

#: Bound parameters per IN (...) list: far below SQLite's and PostgreSQL's limits.
_CHUNK = 500


def _chunks(items: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _addr(value: str) -> str:
    try:
        return checksum(value)
    except ValueError as exc:
        raise LedgerError(str(exc)) from None


def _hex32(value: str | bytes) -> str:
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 32:
            raise LedgerError(f"expected 32 bytes, got {len(value)}")
        return "0x" + bytes(value).hex()
    v = value.lower()
    if not v.startswith("0x"):
        v = "0x" + v
    if len(v) != 66 or any(c not in "0123456789abcdef" for c in v[2:]):
        raise LedgerError(f"{value!r} is not a 32-byte hex value")
    return v


def outcomes(outcome: int, counts: Sequence[int], slash_mask: int, revealed: Sequence[bool]) -> list[str]:
    """Each provider's part in a settled job, from JobSettled (and reveals, on the fallback path).

    JobSettled has no "present" mask: a result is known to exist when its token count is > 0 or
    it was revealed. Under a majority every present, unslashed result agreed (a present dissenter
    is always slashed); when the agreeing results themselves claimed 0 tokens, every unslashed
    provider is counted as agreeing, since a missing one cannot be told apart.
    """
    slashed = [bool(slash_mask >> i & 1) for i in range(3)]
    present = [counts[i] > 0 or bool(revealed[i]) for i in range(3)]
    if outcome == OUTCOME_MAJORITY:
        if sum(present[i] and not slashed[i] for i in range(3)) < 2:
            present = [not s for s in slashed]
        return ["slashed" if slashed[i] else "agreed" if present[i] else "missing" for i in range(3)]
    return ["slashed" if slashed[i] else "dissent" if present[i] else "missing" for i in range(3)]


def _upsert(s: Session, model: type[Base], values: dict[str, Any], keys: Sequence[str],
            set_: Mapping[str, Any]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE: one statement, race-free on both backends."""
    dialect = s.get_bind().dialect.name
    mod = postgresql if dialect == "postgresql" else sqlite
    stmt = mod.insert(model).values(**values)
    s.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=dict(set_)))


def _insert_ignore(s: Session, model: type[Base], rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    if not rows:
        return
    mod = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    s.execute(mod.insert(model).on_conflict_do_nothing(index_elements=list(keys)), rows)


class _Rows:
    """Rows of one table that a batch touches: loaded once, changed in memory, written in bulk.
    Updates carry only the columns the batch changed, so a concurrent writer of other columns
    (record_observation sets results.latency_ms) is never overwritten."""

    def __init__(self, s: Session, model: type[Base], key: Sequence[str]) -> None:
        self.s = s
        self.model = model
        self.table = model.__table__
        self.key = tuple(key)
        self.rows: dict[tuple, dict[str, Any]] = {}
        self.new: set[tuple] = set()
        self.changed: dict[tuple, set[str]] = defaultdict(set)
        self.missing: set[tuple] = set()

    def get(self, key: tuple) -> dict[str, Any] | None:
        if key in self.rows:
            return self.rows[key]
        if key in self.missing:
            return None
        q = select(self.table).where(*(self.table.c[k] == v for k, v in zip(self.key, key)))
        row = self.s.execute(q).mappings().first()
        if row is None:
            self.missing.add(key)
            return None
        self.rows[key] = dict(row)
        return self.rows[key]

    def preload(self, keys: Iterable[tuple]) -> None:
        """Load many rows of a single-column key in a few IN queries instead of one query each."""
        wanted = sorted({k for k in keys if k not in self.rows and k not in self.missing})
        col = self.table.c[self.key[0]]
        for chunk in _chunks(wanted):
            for r in self.s.execute(select(self.table).where(col.in_([k[0] for k in chunk]))).mappings():
                self.rows[(r[self.key[0]],)] = dict(r)
        self.missing.update(k for k in wanted if k not in self.rows)

    def known_absent(self, job_id: str) -> None:
        """Slots 0..2 of `job_id` not held now are not in the database either: skip the lookups."""
        for idx in range(3):
            if (job_id, idx) not in self.rows:
                self.missing.add((job_id, idx))

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        key = tuple(row[k] for k in self.key)
        self.missing.discard(key)
        self.rows[key] = row
        self.new.add(key)
        return row

    def set(self, row: dict[str, Any], **values: Any) -> None:
        row.update(values)
        key = tuple(row[k] for k in self.key)
        if key not in self.new:
            self.changed[key].update(values)

    def flush(self) -> None:
        if self.new:
            cols = [c.name for c in self.table.columns]
            rows = [{c: self.rows[k].get(c) for c in cols} for k in self.rows if k in self.new]
            self.s.execute(insert(self.table), rows)
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for k, names in self.changed.items():
            if k in self.new or not names:
                continue
            shape = tuple(sorted(names))
            by_shape[shape].append({**{c: self.rows[k][c] for c in shape}, **dict(zip(self.key, k))})
        for rows in by_shape.values():
            self.s.execute(update(self.model), rows)


class _BatchWriter:
    """Applies one batch of chain events (in chain order) to the rows they change."""

    def __init__(self, s: Session, params: RegistryParams, half_life_s: float) -> None:
        self.s = s
        self.params = params
        self.half_life_s = half_life_s
        self.providers = _Rows(s, Provider, ["address"])
        self.jobs = _Rows(s, Job, ["job_id"])
        self.slots = _Rows(s, JobSlot, ["job_id", "idx"])
        self.results = _Rows(s, Result, ["job_id", "idx"])
        self.evidence: dict[str, Evidence] = {}
        self.loaded_jobs: set[str] = set()
        self.inserts: dict[type[Base], list[dict[str, Any]]] = defaultdict(list)

    # -- row access

    def provider(self, address: str, ev: ChainEvent) -> dict[str, Any]:
        row = self.providers.get((address,))
        if row is None:
            row = self.providers.add(dict(
                address=address, registered=False, model_hash=None, manifest_hash=None, price=None, endpoint=None, stake=0,
                locked=0, thawing=0, thaw_ready_at=None, owed=0, earned=0, withdrawn=0, slashed=0, jobs=0,
                registered_at=None, first_block=ev.block_number, last_block=ev.block_number,
            ))
        return row

    def bump(self, address: str, ev: ChainEvent, **deltas: int) -> dict[str, Any]:
        row = self.provider(address, ev)
        self.providers.set(row, last_block=ev.block_number, **{k: row[k] + v for k, v in deltas.items()})
        return row

    def job(self, job_id: str) -> dict[str, Any]:
        row = self.jobs.get((job_id,))
        if row is None:
            raise LedgerError(f"the chain refers to job {job_id}, which this ledger never saw opened",
                              "the ledger is incomplete: run `mesh ledger sync --reset`")
        if job_id not in self.loaded_jobs:
            self.loaded_jobs.add(job_id)
            for table, rows in ((JobSlot, self.slots), (Result, self.results)):
                t = table.__table__
                for r in self.s.execute(select(t).where(t.c.job_id == job_id)).mappings():
                    key = (r["job_id"], r["idx"])
                    if key not in rows.rows:
                        rows.rows[key] = dict(r)
                rows.known_absent(job_id)
        return row

    def result(self, job_id: str, idx: int, provider: str) -> dict[str, Any]:
        row = self.results.get((job_id, idx))
        if row is None:
            row = self.results.add(dict(job_id=job_id, idx=idx, provider=provider, commitment=None, revealed=False,
                                        output_hash=None, token_count=None, paid=None, latency_ms=None,
                                        outcome=None, settled_at=None))
        return row

    def add_evidence(self, provider: str, at: float, **amounts: float) -> Evidence:
        if provider not in self.evidence:
            self.lock_evidence([provider])
        e = self.evidence[provider]
        e.add(float(at), **amounts)
        return e

    def lock_for(self, max_tokens: int, price: int) -> int:
        return self.params.lock_for(max_tokens, price)

    # -- events

    def prefetch(self, events: Sequence[ChainEvent]) -> None:
        """Read every provider, job and evidence row the batch will touch, in bulk."""
        addresses: set[str] = set()
        job_ids: set[str] = set()
        opened: set[str] = set()
        for ev in events:
            a = ev.args
            for k in ("provider", "oldProvider", "newProvider"):
                if k in a:
                    addresses.add(a[k])
            addresses.update(a.get("providers", ()))
            if ev.name == "JobOpened":
                opened.add(a["jobId"])
            elif "jobId" in a:
                job_ids.add(a["jobId"])
        job_ids -= opened
        self.jobs.preload((j,) for j in job_ids)
        present = sorted(j for j in job_ids if (j,) in self.jobs.rows)
        for table, rows in ((JobSlot, self.slots), (Result, self.results)):
            t = table.__table__
            for chunk in _chunks(present):
                for r in self.s.execute(select(t).where(t.c.job_id.in_(chunk))).mappings():
                    rows.rows[(r["job_id"], r["idx"])] = dict(r)
        for j in present:
            self.slots.known_absent(j)
            self.results.known_absent(j)
            self.loaded_jobs.add(j)
        addresses.update(sl["provider"] for sl in self.slots.rows.values())
        self.providers.preload((a,) for a in addresses)
        self.lock_evidence(addresses)

    def lock_evidence(self, addresses: Iterable[str]) -> None:
        """Make sure each provider has an evidence row, and hold it (FOR UPDATE) until commit:
        record_observation may update the same rows from another process meanwhile. Sorted, so
        two writers always lock in the same order and never deadlock."""
        wanted = sorted(set(addresses) - set(self.evidence))
        if not wanted:
            return
        _insert_ignore(self.s, ProviderReputation, [_blank_evidence(a, self.half_life_s) for a in wanted], ["provider"])
        t = ProviderReputation.__table__
        for chunk in _chunks(wanted):
            q = select(t).where(t.c.provider.in_(chunk)).order_by(t.c.provider).with_for_update()
            for r in self.s.execute(q).mappings():
                self.evidence[r["provider"]] = _evidence_from_row(r)

    def apply(self, events: Sequence[ChainEvent]) -> None:
        self.prefetch(events)
        for ev in events:
            self.inserts[EventLog].append(dict(
                block_number=ev.block_number, block_hash=ev.block_hash, block_time=ev.block_time, tx_hash=ev.tx_hash,
                log_index=ev.log_index, contract=ev.contract, name=ev.name, args=dict(ev.args),
            ))
            handler = getattr(self, "on_" + ev.name, None)
            if handler is not None:
                handler(ev, ev.args)

    def _log(self, ev: ChainEvent) -> dict[str, Any]:
        return dict(block_number=ev.block_number, block_time=ev.block_time, tx_hash=ev.tx_hash, log_index=ev.log_index)

    # registry
    def on_ProviderRegistered(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        row = self.provider(a["provider"], ev)
        self.providers.set(row, registered=True, model_hash=a["modelHash"], manifest_hash=a["manifestHash"],
                           price=a["price"], endpoint=a.get("endpoint") or None,
                           registered_at=row["registered_at"] or ev.block_time,
                           last_block=ev.block_number)

    def on_ProviderDeregistered(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        # The listing is gone on-chain; model and manifest hash stay as "last offered".
        self.providers.set(self.provider(a["provider"], ev), registered=False, last_block=ev.block_number)

    def on_Staked(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        self.bump(a["provider"], ev, stake=a["amount"])

    def on_UnstakeRequested(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        row = self.bump(a["provider"], ev, stake=-a["amount"], thawing=a["amount"])
        self.providers.set(row, thaw_ready_at=a["readyAt"])

    def on_StakeWithdrawn(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        row = self.bump(a["provider"], ev, thawing=-a["amount"])
        if row["thawing"] == 0:
            self.providers.set(row, thaw_ready_at=None)

    def on_EarningsWithdrawn(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        self.bump(a["provider"], ev, owed=-a["amount"], withdrawn=a["amount"])

    def on_Slashed(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        # The outcome ("slashed") and its reputation weight come from JobSettled in the same tx.
        self.job(a["jobId"])
        self.bump(a["provider"], ev, stake=-a["amount"], slashed=a["amount"])
        self.inserts[Slash].append(dict(provider=a["provider"], job_id=a["jobId"], amount=a["amount"], **self._log(ev)))

    # market
    def on_JobOpened(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        job_id = a["jobId"]
        prices = [int(p) for p in a["prices"]]
        self.jobs.add(dict(
            job_id=job_id, consumer=a["consumer"], model_hash=a["modelHash"], prompt_hash=a["promptHash"],
            max_tokens=a["maxTokens"], price_cap=a["priceCap"], opened_at=a["openedAt"], opened_block=ev.block_number,
            escrow=a["maxTokens"] * sum(prices), status="open", outcome=None, output_hash=None, refund=None,
            settled_at=None, settled_block=None,
        ))
        self.loaded_jobs.add(job_id)
        self.results.known_absent(job_id)
        for idx, (p, price) in enumerate(zip(a["providers"], prices)):
            self.slots.add(dict(job_id=job_id, idx=idx, provider=p, price=price))
            self.bump(p, ev, locked=self.lock_for(a["maxTokens"], price), jobs=1)

    def on_ProviderReplaced(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        job = self.job(a["jobId"])
        idx = a["index"]
        slot = self.slots.get((job["job_id"], idx))
        old_price, new_price = slot["price"], a["price"]
        self.bump(a["oldProvider"], ev, locked=-self.lock_for(job["max_tokens"], old_price))
        self.bump(a["newProvider"], ev, locked=self.lock_for(job["max_tokens"], new_price), jobs=1)
        self.slots.set(slot, provider=a["newProvider"], price=new_price)
        self.jobs.set(job, escrow=job["escrow"] + job["max_tokens"] * (new_price - old_price))
        self.inserts[Replacement].append(dict(job_id=job["job_id"], idx=idx, old_provider=a["oldProvider"],
                                              new_provider=a["newProvider"], price=new_price, **self._log(ev)))
        self.add_evidence(a["oldProvider"], ev.block_time, replaced=1.0)

    def on_ResultCommitted(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        self.job(a["jobId"])
        row = self.result(a["jobId"], a["index"], a["provider"])
        self.results.set(row, commitment=a["commitment"])

    def on_ResultRevealed(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        self.job(a["jobId"])
        row = self.result(a["jobId"], a["index"], a["provider"])
        self.results.set(row, revealed=True, output_hash=a["outputHash"], token_count=a["tokenCount"])

    def on_JobSettled(self, ev: ChainEvent, a: Mapping[str, Any]) -> None:
        job = self.job(a["jobId"])
        job_id = job["job_id"]
        majority = a["outcome"] == OUTCOME_MAJORITY
        counts = [int(c) for c in a["tokenCounts"]]
        paid = [int(p) for p in a["paid"]]
        slots = [self.slots.get((job_id, i)) for i in range(3)]
        revealed = [bool((self.results.get((job_id, i)) or {}).get("revealed")) for i in range(3)]
        parts = outcomes(a["outcome"], counts, a["slashMask"], revealed)
        self.jobs.set(job, status="settled" if majority else "refunded", outcome="majority" if majority else "no_majority",
                      output_hash=a["outputHash"] if majority else None, refund=a["refund"],
                      settled_at=ev.block_time, settled_block=ev.block_number)
        for i, slot in enumerate(slots):
            provider = slot["provider"]
            row = self.result(job_id, i, provider)
            values: dict[str, Any] = dict(provider=provider, outcome=parts[i], paid=paid[i], settled_at=ev.block_time)
            if parts[i] != "missing":
                values["token_count"] = counts[i]
            if parts[i] == "agreed":
                values["output_hash"] = a["outputHash"]
            self.results.set(row, **values)
            self.bump(provider, ev, locked=-self.lock_for(job["max_tokens"], slot["price"]), owed=paid[i], earned=paid[i])
            if paid[i]:
                self.inserts[Payment].append(dict(job_id=job_id, provider=provider, amount=paid[i],
                                                  token_count=counts[i], **self._log(ev)))
            e = self.add_evidence(provider, ev.block_time, **{parts[i]: 1.0})
            e.jobs += 1
        if a["refund"]:
            self.inserts[Refund].append(dict(job_id=job_id, consumer=job["consumer"], amount=a["refund"], **self._log(ev)))

    # -- write

    def flush(self) -> None:
        self._join_latency()
        # Parents before children: foreign keys are checked per statement.
        self.providers.flush()
        self.jobs.flush()
        self.slots.flush()
        self.results.flush()
        for model in (Replacement, Payment, Refund, Slash, EventLog):
            if self.inserts[model]:
                self.s.execute(insert(model.__table__), self.inserts[model])
        _save_evidence(self.s, self.evidence.values(), set())

    def _join_latency(self) -> None:
        """Local first-token latencies recorded before the indexer saw the job's result."""
        keys = [k for k in self.results.rows if (k in self.results.new or k in self.results.changed)
                and self.results.rows[k]["latency_ms"] is None]
        if not keys:
            return
        job_ids = sorted({k[0] for k in keys})
        seen: dict[tuple[str, str], float] = {}
        for chunk in _chunks(job_ids):
            q = (select(Observation.job_id, Observation.provider, Observation.value_ms)
                 .where(Observation.kind == "first_token", Observation.job_id.in_(chunk))
                 .order_by(Observation.observed_at))
            for jid, prov, ms in self.s.execute(q):
                seen.setdefault((jid, prov), ms)
        for k in keys:
            row = self.results.rows[k]
            ms = seen.get((row["job_id"], row["provider"]))
            if ms is not None:
                self.results.set(row, latency_ms=int(round(ms)))


def _blank_evidence(provider: str, half_life_s: float) -> dict[str, Any]:
    # ref_time 0: no evidence has no age, and the first event folded in sets it.
    return dict(provider=provider, half_life_s=half_life_s, ref_time=0.0, jobs=0, score=None, scored_at=None,
                **{c: 0.0 for c in COUNTERS})


def _evidence_from_row(r: Mapping[str, Any]) -> Evidence:
    return Evidence(provider=r["provider"], half_life_s=r["half_life_s"], ref_time=r["ref_time"], jobs=r["jobs"],
                    score=r["score"], scored_at=r["scored_at"], **{c: r[c] for c in COUNTERS})


def _load_evidence(s: Session, provider: str, *, lock: bool = False) -> Evidence | None:
    t = ProviderReputation.__table__
    q = select(t).where(t.c.provider == provider)
    if lock:
        q = q.with_for_update()
    r = s.execute(q).mappings().first()
    return None if r is None else _evidence_from_row(r)


def _save_evidence(s: Session, evidence: Iterable[Evidence], new: set[str]) -> None:
    inserts, updates = [], []
    for e in evidence:
        row = dict(provider=e.provider, half_life_s=e.half_life_s, ref_time=e.ref_time, jobs=e.jobs, **e.counters())
        (inserts if e.provider in new else updates).append(row)
    if inserts:
        s.execute(insert(ProviderReputation), [{**r, "score": None, "scored_at": None} for r in inserts])
    if updates:
        s.execute(update(ProviderReputation), updates)


def _cursor(row: IndexerCursor) -> Cursor:
    return Cursor(
        identity=ChainIdentity(row.chain_id, row.genesis_hash, row.token_address, row.registry_address,
                               row.market_address),
        params=RegistryParams(row.min_job_lock, row.collateral_ratio),
        start_block=row.start_block, last_block=row.last_block, last_block_hash=row.last_block_hash,
        updated_at=row.updated_at,
    )


def _provider_row(p: Provider) -> ProviderRow:
    return ProviderRow(
        address=p.address, registered=p.registered, model_hash=p.model_hash, manifest_hash=p.manifest_hash,
        price=p.price, endpoint=p.endpoint, stake=p.stake, locked=p.locked, thawing=p.thawing, thaw_ready_at=p.thaw_ready_at,
        owed=p.owed, earned=p.earned, withdrawn=p.withdrawn, slashed=p.slashed, jobs=p.jobs,
        registered_at=p.registered_at, last_block=p.last_block,
    )


class SqlLedger(Ledger):
    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(mesh_write=True), expire_on_commit=False)

    def __repr__(self) -> str:
        return f"SqlLedger({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with self._guard(), self._read() as s, s.begin():
            yield s

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._guard(), self._write() as s, s.begin():
            yield s

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Database failures become LedgerError: one sentence for the CLI, not a traceback."""
        try:
            yield
        except OperationalError as exc:
            raise LedgerError(f"the ledger database failed: {exc.orig}",
                              "check that it is reachable and not locked by a hung process") from exc
        except SQLAlchemyError as exc:
            if isinstance(getattr(exc, "orig", None), OverflowError):
                raise LedgerError(str(exc.orig)) from exc
            raise

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ indexer side

    def cursor(self) -> Cursor | None:
        with self._reading() as s:
            row = s.get(IndexerCursor, 1)
            return None if row is None else _cursor(row)

    def init_cursor(self, identity: ChainIdentity, params: RegistryParams, start_block: int,
                    parent_hash: str) -> Cursor:
        try:
            with self._writing() as s:
                row = s.get(IndexerCursor, 1)
                if row is None:
                    row = IndexerCursor(
                        id=1, chain_id=identity.chain_id, genesis_hash=identity.genesis_hash, token_address=identity.token,
                        registry_address=identity.registry, market_address=identity.market, min_job_lock=params.min_job_lock,
                        collateral_ratio=params.collateral_ratio, start_block=start_block,
                        last_block=start_block - 1, last_block_hash=parent_hash, updated_at=time.time(),
                    )
                    s.add(row)
                    s.flush()
                return _cursor(row)
        except IntegrityError:
            # Another process bound the ledger between our read and our insert (PostgreSQL).
            cur = self.cursor()
            assert cur is not None
            return cur

    def apply_batch(self, events: Sequence[ChainEvent], *, from_block: int, to_block: int,
                    to_hash: str) -> BatchResult:
        with self._writing() as s:
            cur = s.execute(select(IndexerCursor).where(IndexerCursor.id == 1).with_for_update()).scalar_one_or_none()
            if cur is None:
                raise LedgerError("the ledger is not bound to a chain yet", "run `mesh ledger sync`")
            if cur.last_block >= to_block:
                return BatchResult(0, len(events), cur.last_block)  # another process indexed it already
            if cur.last_block < from_block - 1:
                raise LedgerError(f"blocks {cur.last_block + 1}..{from_block - 1} would be skipped",
                                  "index from the cursor on (this is a bug in the caller)")
            have = {(tx, i) for tx, i in s.execute(
                select(EventLog.tx_hash, EventLog.log_index).where(EventLog.block_number.between(from_block, to_block)))}
            fresh: dict[tuple[str, int], ChainEvent] = {}
            for e in events:
                key = (e.tx_hash, e.log_index)
                if key not in have and key not in fresh:
                    fresh[key] = e
            ordered = sorted(fresh.values(), key=lambda e: (e.block_number, e.log_index))
            writer = _BatchWriter(s, RegistryParams(cur.min_job_lock, cur.collateral_ratio), self._half_life(s))
            writer.apply(ordered)
            writer.flush()
            cur.last_block = to_block
            cur.last_block_hash = to_hash
            cur.updated_at = time.time()
            return BatchResult(len(ordered), len(events) - len(ordered), to_block)

    def _half_life(self, s: Session) -> float:
        # A ledger uses one half-life for all counters: the one its existing rows were built with.
        hl = s.execute(select(ProviderReputation.half_life_s).limit(1)).scalar()
        return float(hl) if hl else DEFAULT_HALF_LIFE_S

    def reset_chain_data(self) -> None:
        with self._writing() as s:
            for name in CHAIN_TABLES:
                s.execute(delete(Base.metadata.tables[name]))
            half_life = self._half_life(s)
            s.execute(delete(ProviderReputation))
            _rebuild(s, half_life)

    # ------------------------------------------------------------------ local facts

    def record_observation(self, provider: str, kind: str, value_ms: float | None = None, *,
                           job_id: str | bytes | None = None, at: float | None = None) -> None:
        provider = _addr(provider)
        if kind not in OBSERVATION_KINDS:
            raise LedgerError(f"unknown observation kind {kind!r}", f"use one of {', '.join(OBSERVATION_KINDS)}")
        if kind == "first_token" and (value_ms is None or value_ms < 0):
            raise LedgerError("a first_token observation needs its latency (value_ms >= 0)")
        at = time.time() if at is None else float(at)
        jid = None if job_id is None else _hex32(job_id)
        with self._writing() as s:
            s.add(Observation(provider=provider, kind=kind, value_ms=value_ms, job_id=jid, observed_at=at))
            _insert_ignore(s, ProviderReputation, [_blank_evidence(provider, self._half_life(s))], ["provider"])
            e = _load_evidence(s, provider, lock=True)
            assert e is not None
            e.add(at, **_observation_evidence(kind, value_ms))
            _save_evidence(s, [e], set())
            if jid is not None and kind == "first_token":
                s.execute(update(Result).where(Result.job_id == jid, Result.provider == provider)
                          .values(latency_ms=int(round(value_ms))))

    def peer_seen(self, peer_id: str, address: str | None = None, *, at: float | None = None) -> None:
        at = time.time() if at is None else float(at)
        values = dict(peer_id=peer_id, address=_addr(address) if address else None, first_seen=at, last_seen=at,
                      failures=0, last_failure=None)
        update_ = {"last_seen": at}
        if address:
            update_["address"] = values["address"]
        with self._writing() as s:
            _upsert(s, Peer, values, ["peer_id"], update_)

    def peer_failed(self, peer_id: str, *, at: float | None = None) -> None:
        at = time.time() if at is None else float(at)
        with self._writing() as s:
            _upsert(s, Peer, dict(peer_id=peer_id, address=None, first_seen=at, last_seen=at, failures=1, last_failure=at),
                    ["peer_id"], {"failures": Peer.__table__.c.failures + 1, "last_failure": at})

    def peers(self, *, limit: int = 100) -> list[PeerRow]:
        with self._reading() as s:
            rows = s.scalars(select(Peer).order_by(Peer.last_seen.desc(), Peer.peer_id).limit(limit))
            return [PeerRow(p.peer_id, p.address, p.first_seen, p.last_seen, p.failures, p.last_failure) for p in rows]

    def save_manifest(self, provider: str, manifest_hash: str | bytes, peer_id: str, multiaddrs: Sequence[str],
                      body: Mapping[str, Any], *, fetched_at: float | None = None) -> None:
        at = time.time() if fetched_at is None else float(fetched_at)
        values = dict(provider=_addr(provider), manifest_hash=_hex32(manifest_hash), peer_id=peer_id,
                      multiaddrs=[str(m) for m in multiaddrs], body=dict(body), fetched_at=at)
        with self._writing() as s:
            _upsert(s, Manifest, values, ["provider", "manifest_hash"],
                    {k: values[k] for k in ("peer_id", "multiaddrs", "body", "fetched_at")})

    def manifest(self, provider: str, manifest_hash: str | bytes | None = None) -> ManifestRow | None:
        q = select(Manifest).where(Manifest.provider == _addr(provider))
        if manifest_hash is not None:
            q = q.where(Manifest.manifest_hash == _hex32(manifest_hash))
        with self._reading() as s:
            m = s.scalars(q.order_by(Manifest.fetched_at.desc()).limit(1)).first()
            if m is None:
                return None
            return ManifestRow(m.provider, m.manifest_hash, m.peer_id, tuple(m.multiaddrs), dict(m.body), m.fetched_at)

    # ------------------------------------------------------------------ queries

    def provider(self, address: str) -> ProviderRow | None:
        with self._reading() as s:
            p = s.get(Provider, _addr(address))
            return None if p is None else _provider_row(p)

    def providers(self, *, model_hash: str | bytes | None = None, registered: bool | None = None,
                  max_price: int | None = None) -> list[ProviderRow]:
        q = select(Provider)
        if model_hash is not None:
            q = q.where(Provider.model_hash == _hex32(model_hash))
        if registered is not None:
            q = q.where(Provider.registered.is_(registered))
        if max_price is not None:
            q = q.where(Provider.price <= max_price)
        with self._reading() as s:
            return [_provider_row(p) for p in s.scalars(q.order_by(Provider.address))]

    def candidates(self, model_hash: str | bytes, max_price: int, max_tokens: int) -> list[ProviderRow]:
        cur = self.cursor()
        if cur is None:
            return []
        rows = self.providers(model_hash=model_hash, registered=True, max_price=max_price)
        return [p for p in rows if p.price and p.free_stake >= cur.params.lock_for(max_tokens, p.price)]

    def job(self, job_id: str | bytes) -> JobRow | None:
        jid = _hex32(job_id)
        with self._reading() as s:
            j = s.get(Job, jid)
            return None if j is None else self._job_rows(s, [j])[0]

    def jobs(self, *, limit: int = 50, status: str | None = None, consumer: str | None = None,
             provider: str | None = None) -> list[JobRow]:
        q = select(Job)
        if status is not None:
            q = q.where(Job.status == status)
        if consumer is not None:
            q = q.where(Job.consumer == _addr(consumer))
        if provider is not None:
            p = _addr(provider)
            q = q.where(Job.job_id.in_(select(JobSlot.job_id).where(JobSlot.provider == p)
                                       .union(select(Replacement.job_id).where(Replacement.old_provider == p))))
        q = q.order_by(Job.opened_at.desc(), Job.opened_block.desc(), Job.job_id).limit(limit)
        with self._reading() as s:
            return self._job_rows(s, list(s.scalars(q)))

    def _job_rows(self, s: Session, jobs: list[Job]) -> list[JobRow]:
        ids = [j.job_id for j in jobs]
        slots: dict[str, dict[int, JobSlot]] = defaultdict(dict)
        results: dict[tuple[str, int], Result] = {}
        for chunk in _chunks(ids):
            for sl in s.scalars(select(JobSlot).where(JobSlot.job_id.in_(chunk))):
                slots[sl.job_id][sl.idx] = sl
            for r in s.scalars(select(Result).where(Result.job_id.in_(chunk))):
                results[(r.job_id, r.idx)] = r
        out = []
        for j in jobs:
            parts = []
            for idx, sl in sorted(slots[j.job_id].items()):
                r = results.get((j.job_id, idx))
                parts.append(JobProvider(idx, sl.provider, sl.price, r and r.outcome, r and r.token_count,
                                         r and r.paid, r and r.latency_ms))
            out.append(JobRow(j.job_id, j.consumer, j.model_hash, j.prompt_hash, j.max_tokens, j.price_cap, j.opened_at,
                              j.opened_block, j.escrow, j.status, j.outcome, j.output_hash, j.refund, j.settled_at,
                              tuple(parts)))
        return out

    def earnings(self, provider: str | None = None) -> list[EarningsRow]:
        agg = (select(Payment.provider, func.count().label("n"), func.sum(Payment.token_count).label("tokens"))
               .group_by(Payment.provider).subquery())
        q = (select(Provider, agg.c.n, agg.c.tokens).outerjoin(agg, agg.c.provider == Provider.address))
        if provider is not None:
            q = q.where(Provider.address == _addr(provider))
        with self._reading() as s:
            rows = [EarningsRow(p.address, int(n or 0), int(tokens or 0), p.earned, p.withdrawn, p.owed, p.slashed)
                    for p, n, tokens in s.execute(q)]
        return sorted(rows, key=lambda r: (-r.earned, r.provider))

    def slashes(self, *, provider: str | None = None, limit: int = 50) -> list[SlashRow]:
        q = select(Slash)
        if provider is not None:
            q = q.where(Slash.provider == _addr(provider))
        q = q.order_by(Slash.block_number.desc(), Slash.log_index.desc()).limit(limit)
        with self._reading() as s:
            return [SlashRow(x.provider, x.job_id, x.amount, x.block_number, x.block_time, x.tx_hash) for x in s.scalars(q)]

    def counts(self) -> dict[str, int]:
        with self._reading() as s:
            return {name: int(s.execute(select(func.count()).select_from(t)).scalar_one())
                    for name, t in sorted(Base.metadata.tables.items())}

    # ------------------------------------------------------------------ reputation evidence

    def evidence(self, providers: Iterable[str] | None = None) -> dict[str, Evidence]:
        t = ProviderReputation.__table__
        out: dict[str, Evidence] = {}
        with self._reading() as s:
            if providers is None:
                for r in s.execute(select(t)).mappings():
                    out[r["provider"]] = _evidence_from_row(r)
                return out
            wanted = sorted({_addr(p) for p in providers})
            for chunk in _chunks(wanted):
                for r in s.execute(select(t).where(t.c.provider.in_(chunk))).mappings():
                    out[r["provider"]] = _evidence_from_row(r)
        return out

    def save_scores(self, scores: Mapping[str, float], at: float) -> None:
        if not scores:
            return
        with self._writing() as s:
            known = set(s.scalars(select(ProviderReputation.provider)))
            rows = [{"provider": p, "score": float(v), "scored_at": float(at)} for p, v in scores.items() if p in known]
            if rows:
                s.execute(update(ProviderReputation), rows)

    def rebuild_reputation(self, half_life_s: float) -> int:
        with self._writing() as s:
            return _rebuild(s, half_life_s)


# Outcome names double as evidence counter names (agreed, dissent, missing, slashed).
def _observation_evidence(kind: str, value_ms: float | None) -> dict[str, float]:
    if kind == "connect_failure":
        return {"connect_failures": 1.0}
    if kind == "timeout":
        return {"timeouts": 1.0}
    return {"latency_sum": float(value_ms or 0.0), "latency_weight": 1.0}


def _rebuild(s: Session, half_life_s: float) -> int:
    """Fold every piece of evidence again, oldest first, into fresh counters (every provider that
    had a row keeps one)."""
    ev: dict[str, Evidence] = {p: Evidence(p, half_life_s, 0.0) for p in s.scalars(select(ProviderReputation.provider))}
    s.execute(delete(ProviderReputation))
    items: list[tuple[float, str, dict[str, float], int]] = []
    for prov, outcome, at in s.execute(select(Result.provider, Result.outcome, Result.settled_at)
                                       .where(Result.outcome.is_not(None))):
        items.append((float(at), prov, {outcome: 1.0}, 1))
    for prov, at in s.execute(select(Replacement.old_provider, Replacement.block_time)):
        items.append((float(at), prov, {"replaced": 1.0}, 0))
    for prov, kind, ms, at in s.execute(select(Observation.provider, Observation.kind, Observation.value_ms,
                                               Observation.observed_at)):
        items.append((float(at), prov, _observation_evidence(kind, ms), 0))
    items.sort(key=lambda x: x[0])
    for at, prov, amounts, jobs in items:
        e = ev.get(prov)
        if e is None:
            e = ev[prov] = Evidence(prov, half_life_s, at)
        e.add(at, **amounts)
        e.jobs += jobs
    _save_evidence(s, ev.values(), set(ev))
    return len(ev)
