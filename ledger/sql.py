"""`SqlLedger`: the `Ledger` on SQLAlchemy, for SQLite and PostgreSQL alike.

Chain events become rows in `ledger.writer.BatchWriter` (one batch, one transaction, the cursor
moving with it); this node's own facts fold into evidence through `ledger.local`. Every write that
touches evidence first locks the cursor row, so on PostgreSQL a batch and an observation never
interleave (SQLite serializes writers anyway, BEGIN IMMEDIATE): the counters folded in as things
arrive stay what a rebuild from the rows gives.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from meshmarket.ledger.evidence import DEFAULT_HALF_LIFE_S, Evidence
from meshmarket.ledger.local import make_local, observation_evidence, rebuild, seat_delivered
from meshmarket.ledger.models import (
    CHAIN_TABLES,
    Base,
    Dispute,
    EventLog,
    IndexerCursor,
    Job,
    Juror,
    LocalAccount,
    Manifest,
    Observation,
    Payment,
    Peer,
    Provider,
    ProviderReputation,
    Seat,
    Slash,
)
from meshmarket.ledger.outcomes import OPEN_MARKET
from meshmarket.ledger.records import (
    OBSERVATION_KINDS,
    BatchResult,
    ChainEvent,
    ChainIdentity,
    Cursor,
    DisputeRow,
    EarningsRow,
    JobRow,
    JurorRow,
    ManifestRow,
    PeerRow,
    ProviderRow,
    RegistryParams,
    SeatRow,
    SlashRow,
    checksum,
)
from meshmarket.ledger.rows import chunks, evidence_from_row, half_life, insert_ignore, lock_evidence, save_evidence, upsert
from meshmarket.ledger.store import Ledger
from meshmarket.ledger.writer import BatchWriter
from meshmarket.mesh.errors import LedgerError


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


def _cursor(row: IndexerCursor) -> Cursor:
    return Cursor(
        identity=ChainIdentity(row.chain_id, row.genesis_hash, row.token_address, row.registry_address,
                               row.market_address),
        params=RegistryParams(row.min_job_lock, row.collateral_ratio, row.max_lock_share, row.weight_cap),
        start_block=row.start_block, last_block=row.last_block, last_block_hash=row.last_block_hash,
        updated_at=row.updated_at,
    )


def _provider_row(p: Provider) -> ProviderRow:
    return ProviderRow(
        address=p.address, registered=p.registered, model_hash=p.model_hash, group=p.group_id,
        manifest_hash=p.manifest_hash, price=p.price, endpoint=p.endpoint, stake=p.stake, locked=p.locked,
        thawing=p.thawing, thaw_ready_at=p.thaw_ready_at, owed=p.owed, earned=p.earned, jury_earned=p.jury_earned,
        withdrawn=p.withdrawn, slashed=p.slashed, jobs=p.jobs, jury_duties=p.jury_duties,
        registered_at=p.registered_at, last_block=p.last_block,
    )


def _seat_row(r: Seat) -> SeatRow:
    return SeatRow(r.seat, r.provider, r.price, r.added, r.outcome, r.output_hash, r.token_count, r.paid, r.locked,
                   r.commitment is not None, r.revealed, r.evidence_posted, r.weight, r.latency_ms)


def _juror_row(j: Juror) -> JurorRow:
    return JurorRow(j.job_id, j.idx, j.juror, j.committed, j.revealed, j.verdicts, j.paid)


def _job_rows(s: Session, jobs: list[Job]) -> list[JobRow]:
    ids = [j.job_id for j in jobs]
    seats: dict[str, list[Seat]] = defaultdict(list)
    jurors: dict[str, list[Juror]] = defaultdict(list)
    disputes: dict[str, Dispute] = {}
    for chunk in chunks(ids):
        for r in s.scalars(select(Seat).where(Seat.job_id.in_(chunk)).order_by(Seat.seat)):
            seats[r.job_id].append(r)
        for j in s.scalars(select(Juror).where(Juror.job_id.in_(chunk)).order_by(Juror.idx)):
            jurors[j.job_id].append(j)
        disputes.update({d.job_id: d for d in s.scalars(select(Dispute).where(Dispute.job_id.in_(chunk)))})
    out = []
    for j in jobs:
        d = disputes.get(j.job_id)
        dispute = None if d is None else DisputeRow(
            d.job_id, d.disputer, d.bond, d.opened_block, d.opened_at, d.jury_at, d.void, d.share, d.bond_refund,
            tuple(_juror_row(x) for x in jurors[j.job_id]))
        out.append(JobRow(
            j.job_id, j.consumer, j.slot, j.model_hash, j.group_id, j.prompt_hash, j.max_tokens, j.price_cap,
            j.open_block, j.opened_at, j.drawn_at, j.seed, j.escrow, j.status, j.outcome, j.output_hash, j.present,
            j.slash_mask, j.contested_at, j.refund, j.settled_at, j.local,
            tuple(_seat_row(r) for r in seats[j.job_id]), dispute))
    return out


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

    @staticmethod
    def _serialize(s: Session) -> None:
        """Wait for any batch in flight (it holds the cursor row) before touching evidence."""
        s.execute(select(IndexerCursor.id).where(IndexerCursor.id == 1).with_for_update())

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
                        registry_address=identity.registry, market_address=identity.market,
                        min_job_lock=params.min_job_lock, collateral_ratio=params.collateral_ratio,
                        max_lock_share=params.max_lock_share, weight_cap=params.weight_cap, start_block=start_block,
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
            writer = BatchWriter(s, _cursor(cur).params, half_life(s, DEFAULT_HALF_LIFE_S))
            writer.apply(ordered)
            writer.flush()
            cur.last_block = to_block
            cur.last_block_hash = to_hash
            cur.updated_at = time.time()
            return BatchResult(len(ordered), len(events) - len(ordered), to_block)

    def reset_chain_data(self) -> None:
        with self._writing() as s:
            hl = half_life(s, DEFAULT_HALF_LIFE_S)
            for name in CHAIN_TABLES:
                s.execute(delete(Base.metadata.tables[name]))
            s.execute(delete(ProviderReputation))
            rebuild(s, hl)

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
            self._serialize(s)
            hl = half_life(s, DEFAULT_HALF_LIFE_S)
            evidence = lock_evidence(s, [provider], hl)
            delivered = jid is not None and seat_delivered(s, jid, provider)
            s.add(Observation(provider=provider, kind=kind, value_ms=value_ms, job_id=jid, observed_at=at))
            evidence[provider].add(at, **observation_evidence(kind, value_ms, jid, delivered))
            if jid is not None:
                # Asking a job's seats makes it this node's own job: its committee anchors reputation.
                make_local(s, [jid], hl, evidence)
                if kind == "first_token":
                    s.execute(update(Seat).where(Seat.job_id == jid, Seat.provider == provider)
                              .values(latency_ms=int(round(value_ms))))
            save_evidence(s, evidence.values(), set())

    def add_local_account(self, address: str, *, at: float | None = None) -> None:
        address = _addr(address)
        at = time.time() if at is None else float(at)
        with self._writing() as s:
            self._serialize(s)
            insert_ignore(s, LocalAccount, [dict(address=address, added_at=at)], ["address"])
            evidence: dict[str, Evidence] = {}
            ids = list(s.scalars(select(Job.job_id).where(Job.consumer == address, Job.local.is_(False))))
            make_local(s, ids, half_life(s, DEFAULT_HALF_LIFE_S), evidence)
            save_evidence(s, evidence.values(), set())

    def local_accounts(self) -> list[str]:
        with self._reading() as s:
            return list(s.scalars(select(LocalAccount.address).order_by(LocalAccount.address)))

    def peer_seen(self, peer_id: str, address: str | None = None, *, at: float | None = None) -> None:
        at = time.time() if at is None else float(at)
        values = dict(peer_id=peer_id, address=_addr(address) if address else None, first_seen=at, last_seen=at,
                      failures=0, last_failure=None)
        update_ = {"last_seen": at}
        if address:
            update_["address"] = values["address"]
        with self._writing() as s:
            upsert(s, Peer, values, ["peer_id"], update_)

    def peer_failed(self, peer_id: str, *, at: float | None = None) -> None:
        at = time.time() if at is None else float(at)
        with self._writing() as s:
            upsert(s, Peer, dict(peer_id=peer_id, address=None, first_seen=at, last_seen=at, failures=1, last_failure=at),
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
            upsert(s, Manifest, values, ["provider", "manifest_hash"],
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

    def providers(self, *, model_hash: str | bytes | None = None, group: str | bytes | None = None,
                  registered: bool | None = None, max_price: int | None = None) -> list[ProviderRow]:
        q = select(Provider)
        if model_hash is not None:
            q = q.where(Provider.model_hash == _hex32(model_hash))
        if group is not None:
            q = q.where(Provider.group_id == _hex32(group))
        if registered is not None:
            q = q.where(Provider.registered.is_(registered))
        if max_price is not None:
            q = q.where(Provider.price <= max_price)
        with self._reading() as s:
            return [_provider_row(p) for p in s.scalars(q.order_by(Provider.address))]

    def candidates(self, model_hash: str | bytes, max_price: int, max_tokens: int,
                   group: str | bytes = OPEN_MARKET) -> list[ProviderRow]:
        cur = self.cursor()
        if cur is None:
            return []
        rows = self.providers(model_hash=model_hash, group=group, registered=True, max_price=max_price)
        return [p for p in rows if p.price and cur.params.can_back(max_tokens, p.price, p.free_stake)]

    def job(self, job_id: str | bytes) -> JobRow | None:
        jid = _hex32(job_id)
        with self._reading() as s:
            j = s.get(Job, jid)
            return None if j is None else _job_rows(s, [j])[0]

    def jobs(self, *, limit: int = 50, status: str | None = None, consumer: str | None = None,
             provider: str | None = None) -> list[JobRow]:
        q = select(Job)
        if status is not None:
            q = q.where(Job.status == status)
        if consumer is not None:
            q = q.where(Job.consumer == _addr(consumer))
        if provider is not None:
            q = q.where(Job.job_id.in_(select(Seat.job_id).where(Seat.provider == _addr(provider))))
        q = q.order_by(Job.opened_at.desc(), Job.open_block.desc(), Job.job_id).limit(limit)
        with self._reading() as s:
            return _job_rows(s, list(s.scalars(q)))

    def juries(self, *, juror: str | None = None, limit: int = 50) -> list[JurorRow]:
        q = select(Juror).join(Dispute, Dispute.job_id == Juror.job_id)
        if juror is not None:
            q = q.where(Juror.juror == _addr(juror))
        q = q.order_by(Dispute.opened_block.desc(), Juror.job_id, Juror.idx).limit(limit)
        with self._reading() as s:
            return [_juror_row(j) for j in s.scalars(q)]

    def earnings(self, provider: str | None = None) -> list[EarningsRow]:
        agg = (select(Payment.provider, func.count().label("n"), func.sum(Payment.token_count).label("tokens"))
               .where(Payment.kind == "seat").group_by(Payment.provider).subquery())
        q = select(Provider, agg.c.n, agg.c.tokens).outerjoin(agg, agg.c.provider == Provider.address)
        if provider is not None:
            q = q.where(Provider.address == _addr(provider))
        with self._reading() as s:
            rows = [EarningsRow(p.address, int(n or 0), int(tokens or 0), p.earned, p.jury_earned, p.withdrawn, p.owed,
                                p.slashed) for p, n, tokens in s.execute(q)]
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
                    out[r["provider"]] = evidence_from_row(r)
                return out
            wanted = sorted({_addr(p) for p in providers})
            for chunk in chunks(wanted):
                for r in s.execute(select(t).where(t.c.provider.in_(chunk))).mappings():
                    out[r["provider"]] = evidence_from_row(r)
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
            self._serialize(s)
            return rebuild(s, half_life_s)
