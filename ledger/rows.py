"""SQL helpers shared by the batch writer (ledger/writer.py) and the store (ledger/sql.py): bulk row
access, portable upserts, and the reputation table's rows as `Evidence`.

Everything here works in the caller's session and transaction; nothing commits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from meshmarket.ledger.evidence import COUNTERS, Evidence
from meshmarket.ledger.models import Base, ProviderReputation

#: Bound parameters per IN (...) list: far below SQLite's and PostgreSQL's limits.
CHUNK = 500


def chunks(items: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def upsert(s: Session, model: type[Base], values: dict[str, Any], keys: Sequence[str],
           set_: Mapping[str, Any]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE: one statement, race-free on both backends."""
    mod = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    stmt = mod.insert(model).values(**values)
    s.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=dict(set_)))


def insert_ignore(s: Session, model: type[Base], rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    if not rows:
        return
    mod = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    s.execute(mod.insert(model).on_conflict_do_nothing(index_elements=list(keys)), rows)


class Rows:
    """Rows of one table that a batch touches: loaded once, changed in memory, written in bulk.
    Updates carry only the columns the batch changed, so a concurrent writer of other columns
    (record_observation sets seats.latency_ms) is never overwritten.

    Keys are tuples of the key columns. Tables keyed by (job_id, index) are loaded a job at a time
    (`load_jobs`), after which an index not held is known not to exist."""

    def __init__(self, s: Session, model: type[Base], key: Sequence[str], per_job: int = 0) -> None:
        self.s = s
        self.model = model
        self.table = model.__table__
        self.key = tuple(key)
        self.key_of = (lambda r, k=self.key[0]: (r[k],)) if len(self.key) == 1 else \
            (lambda r, ks=self.key: tuple(r[k] for k in ks))
        self.per_job = per_job
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
        for chunk in chunks(wanted):
            for r in self.s.execute(select(self.table).where(col.in_([k[0] for k in chunk]))).mappings():
                self.rows[(r[self.key[0]],)] = dict(r)
        self.missing.update(k for k in wanted if k not in self.rows)

    def load_jobs(self, job_ids: Iterable[str]) -> None:
        """Load every row of these jobs (a (job_id, index) keyed table)."""
        wanted = sorted(set(job_ids))
        col = self.table.c.job_id
        for chunk in chunks(wanted):
            for r in self.s.execute(select(self.table).where(col.in_(chunk))).mappings():
                key = tuple(r[k] for k in self.key)
                self.rows.setdefault(key, dict(r))
        for j in wanted:
            self.known_absent(j)

    def known_absent(self, job_id: str) -> None:
        """Indexes of `job_id` not held now are not in the database either: skip the lookups."""
        for idx in range(self.per_job):
            if (job_id, idx) not in self.rows:
                self.missing.add((job_id, idx))

    def of_job(self, job_id: str) -> list[dict[str, Any]]:
        """The rows of one job held now, by index."""
        return [self.rows[(job_id, i)] for i in range(self.per_job) if (job_id, i) in self.rows]

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        key = self.key_of(row)
        self.missing.discard(key)
        self.rows[key] = row
        self.new.add(key)
        return row

    def set(self, row: dict[str, Any], **values: Any) -> None:
        row.update(values)
        key = self.key_of(row)
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


# ------------------------------------------------------------------------------ reputation rows

def blank_evidence(provider: str, half_life_s: float) -> dict[str, Any]:
    # ref_time 0: no evidence has no age, and the first event folded in sets it.
    return dict(provider=provider, half_life_s=half_life_s, ref_time=0.0, jobs=0, score=None, scored_at=None,
                **{c: 0.0 for c in COUNTERS})


def evidence_from_row(r: Mapping[str, Any]) -> Evidence:
    return Evidence(provider=r["provider"], half_life_s=r["half_life_s"], ref_time=r["ref_time"], jobs=r["jobs"],
                    score=r["score"], scored_at=r["scored_at"], **{c: r[c] for c in COUNTERS})


def half_life(s: Session, default: float) -> float:
    # A ledger uses one half-life for all counters: the one its existing rows were built with.
    hl = s.execute(select(ProviderReputation.half_life_s).limit(1)).scalar()
    return float(hl) if hl else default


def lock_evidence(s: Session, addresses: Iterable[str], half_life_s: float) -> dict[str, Evidence]:
    """Make sure each provider has an evidence row, and hold it (FOR UPDATE) until commit. Sorted,
    so two writers always lock in the same order and never deadlock."""
    wanted = sorted(set(addresses))
    out: dict[str, Evidence] = {}
    if not wanted:
        return out
    insert_ignore(s, ProviderReputation, [blank_evidence(a, half_life_s) for a in wanted], ["provider"])
    t = ProviderReputation.__table__
    for chunk in chunks(wanted):
        q = select(t).where(t.c.provider.in_(chunk)).order_by(t.c.provider).with_for_update()
        for r in s.execute(q).mappings():
            out[r["provider"]] = evidence_from_row(r)
    return out


def save_evidence(s: Session, evidence: Iterable[Evidence], new: set[str]) -> None:
    inserts, updates = [], []
    for e in evidence:
        row = dict(provider=e.provider, half_life_s=e.half_life_s, ref_time=e.ref_time, jobs=e.jobs, **e.counters())
        (inserts if e.provider in new else updates).append(row)
    if inserts:
        s.execute(insert(ProviderReputation), [{**r, "score": None, "scored_at": None} for r in inserts])
    if updates:
        s.execute(update(ProviderReputation), updates)
