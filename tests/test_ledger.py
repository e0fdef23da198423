"""The ledger store, one suite run against SQLite and a real PostgreSQL server (tests/pg.py).

Migrations (empty -> head -> base -> head, a v1 ledger upgraded to v2, and no difference between
migrations and models), SQLite's settings for a shared file, how decoded v2 chain events become rows
(exact integers, seat outcomes, contest locks, disputes and juries), idempotent and atomic batches,
local observations, and two processes writing one ledger at once. Chain events here are built by
hand in the indexer's decoded form (`EventChain`, also used by test_reputation.py); the indexer's
own tests (test_indexer.py) feed real Anvil logs through the same path.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from meshmarket.ledger import ChainEvent, ChainIdentity, RegistryParams, open_ledger
from meshmarket.ledger.migrate import downgrade, head_revision, upgrade
from meshmarket.ledger.models import Base
from meshmarket.ledger.outcomes import OPEN_MARKET, Settlement, seat_outcomes, tally
from meshmarket.ledger.records import checksum
from meshmarket.mesh.errors import LedgerError
from meshmarket.mesh.market import HARD, PASS, SOFT, pack_verdicts
from tests.pg import ledger_url, pg_cluster, pg_url  # noqa: F401 — fixtures

REPO = Path(__file__).resolve().parent.parent
P = [checksum("0x" + f"{i + 1:02x}" * 20) for i in range(8)]
CONSUMER = checksum("0x" + "c0" * 20)
OTHER_CONSUMER = checksum("0x" + "c1" * 20)
MODEL = "0x" + "ab" * 32
PRIVATE = "0x" + "77" * 32
PARAMS = RegistryParams(min_job_lock=1_000_000, collateral_ratio=2)
IDENTITY = ChainIdentity(31337, "0x" + "00" * 31 + "01", checksum("0x" + "11" * 20), checksum("0x" + "22" * 20),
                         checksum("0x" + "33" * 20))
ZERO_ADDRESS = "0x" + "00" * 20
MARKET_EVENTS = {"JobOpened", "SeatsDrawn", "SeatAdded", "ResultCommitted", "ResultRevealed", "JobContested",
                 "DisputeOpened", "JuryDrawn", "EvidencePosted", "VoteCommitted", "VoteRevealed", "JobSettled",
                 "JuryPaid"}
OUTCOME = {"agreed": 0, "provisional": 1, "judged": 2, "refunded": 3}


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


def pad(values, n: int = 5, fill=0) -> list:
    return list(values) + [fill] * (n - len(values))


class EventChain:
    """Builds ChainEvents as the indexer would decode them, block by block, with helpers that
    compute what the contracts would emit (escrow, pays, refunds) for the usual paths."""

    def __init__(self, start_block: int = 10, start_time: int = 1_700_000_000) -> None:
        self.block = start_block
        self.time = start_time
        self.log = 0
        self.tx = 0
        self.pending: list[ChainEvent] = []
        self.jobs: dict[str, dict] = {}

    def ev(self, name: str, **args) -> ChainEvent:
        self.tx += 1
        e = ChainEvent("market" if name in MARKET_EVENTS else "registry", name, self.block, h(10**6 + self.block),
                       self.time, h(self.tx), self.log, args)
        self.log += 1
        self.pending.append(e)
        return e

    def mine(self, ledger, dt: int = 12):
        """Apply the pending events as one batch covering one block."""
        events, self.pending = self.pending, []
        res = ledger.apply_batch(events, from_block=self.block, to_block=self.block, to_hash=h(10**6 + self.block))
        self.block += 1
        self.time += dt
        self.log = 0
        return res

    # -- registry
    def register(self, p, price=10, group=OPEN_MARKET, model=MODEL):
        return self.ev("ProviderRegistered", provider=p, modelHash=model, group=group, manifestHash=h(int(p, 16) % 997),
                       price=price, endpoint=f"/ip4/127.0.0.1/tcp/4001/p2p/{p[2:10]}")

    # -- a job
    def open(self, job: str, consumer=CONSUMER, group=OPEN_MARKET, max_tokens=100, price_cap=10, slot=0):
        self.jobs[job] = dict(max_tokens=max_tokens, price_cap=price_cap, seats=[], prices=[])
        return self.ev("JobOpened", jobId=job, consumer=consumer, modelHash=MODEL, slot=slot, group=group,
                       promptHash=h(7), maxTokens=max_tokens, priceCap=price_cap)

    def draw(self, job: str, seats=(P[0], P[1], P[2]), prices=(10, 10, 10)):
        self.jobs[job].update(seats=list(seats), prices=list(prices))
        return self.ev("SeatsDrawn", jobId=job, seed=h(77), drawnAt=self.time, seats=list(seats), prices=list(prices))

    def add_seat(self, job: str, provider, price=10):
        j = self.jobs[job]
        j["seats"].append(provider)
        j["prices"].append(price)
        return self.ev("SeatAdded", jobId=job, seat=len(j["seats"]) - 1, provider=provider, price=price)

    def held(self, job: str) -> int:
        j = self.jobs[job]
        return j["max_tokens"] * j["price_cap"] * (max(3, len(j["seats"])) + 1)

    def pays(self, job: str, counts, mask: int) -> list[int]:
        return pad([c * p if mask >> i & 1 else 0 for i, (c, p) in enumerate(zip(counts, self.jobs[job]["prices"]))])

    def settle(self, job: str, outcome="agreed", present=0b111, paid=None, slash_mask=0, refund=None, counts=None):
        """JobSettled; by default every present seat is paid `counts` (40 each) and the rest refunded."""
        counts = counts or [40] * len(self.jobs[job]["seats"])
        paid = pad(paid) if paid is not None else self.pays(job, counts, present)
        refund = self.held(job) - sum(paid) if refund is None else refund
        return self.ev("JobSettled", jobId=job, outcome=OUTCOME[outcome], present=present, paid=paid,
                       slashMask=slash_mask, refund=refund)

    def contest(self, job: str, outputs, counts, present, slashed=0, provisional=0, locks=None):
        n = len(self.jobs[job]["seats"])
        locks = locks or [PARAMS.lock_for(self.jobs[job]["max_tokens"], p) if (present | slashed) >> i & 1 else 0
                          for i, p in enumerate(self.jobs[job]["prices"])]
        contest = dict(outputs=pad(outputs[:n], fill="0x" + "00" * 32), counts=pad(counts[:n]), present=present,
                       slashed=slashed, provisional=provisional, contestedAt=self.time, locks=pad(locks))
        return self.ev("JobContested", jobId=job, contest=contest)

    def agreed_job(self, job: str, seats=(P[0], P[1], P[2]), tokens=40, consumer=CONSUMER, group=OPEN_MARKET, **kw):
        """Open, draw and settle on the fast path in one block (the helper's shortcut: on-chain the
        draw comes a block later)."""
        self.open(job, consumer=consumer, group=group, **kw)
        self.draw(job, seats, [10] * len(seats))
        return self.settle(job, present=(1 << len(seats)) - 1, counts=[tokens] * len(seats))


@pytest.fixture
def led(ledger_url):  # noqa: F811
    ledger = open_ledger(ledger_url)
    try:
        yield ledger
    finally:
        ledger.close()


@pytest.fixture
def bound(led):
    """A ledger bound to a (pretend) chain with six staked providers in the open market."""
    led.init_cursor(IDENTITY, PARAMS, start_block=10, parent_hash=h(10**6 + 9))
    c = EventChain()
    for p in P[:6]:
        c.register(p)
        c.ev("Staked", provider=p, amount=10**9)
    c.mine(led)
    return led, c


# ------------------------------------------------------------------------------ migrations

def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(ledger_url):  # noqa: F811
    assert tables(ledger_url) == set()
    led = open_ledger(ledger_url)  # empty -> head
    try:
        assert tables(ledger_url) == set(Base.metadata.tables) | {"alembic_version"}
        downgrade(led.engine, "base")
        assert tables(ledger_url) == {"alembic_version"}
        assert upgrade(led.engine) is True
        assert tables(ledger_url) == set(Base.metadata.tables) | {"alembic_version"}
        assert upgrade(led.engine) is False  # at head: nothing to do
        with led.engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    finally:
        led.close()


def test_migrations_match_models(ledger_url):  # noqa: F811
    led = open_ledger(ledger_url)
    try:
        with led.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"migrations and models differ; write a new version (python -m meshmarket.ledger.migrate revision " \
                           f"--autogenerate -m ...): {diff}"
    finally:
        led.close()


V1_ROWS = [
    "INSERT INTO providers (address, registered, stake, locked, thawing, owed, earned, withdrawn, slashed, jobs, "
    "first_block, last_block) VALUES ('{p}', TRUE, 5, 0, 0, 0, 0, 0, 0, 1, 1, 1)",
    "INSERT INTO jobs (job_id, consumer, model_hash, prompt_hash, max_tokens, price_cap, opened_at, opened_block, escrow, "
    "status) VALUES ('{j}', '{c}', '{m}', '{m}', 10, 10, 1, 1, 300, 'open')",
    "INSERT INTO reputation (provider, half_life_s, ref_time, agreed, dissent, slashed, missing, replaced, timeouts, "
    "connect_failures, latency_sum, latency_weight, jobs) VALUES ('{p}', 1209600, 1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1)",
    "INSERT INTO observations (provider, kind, value_ms, job_id, observed_at) VALUES ('{p}', 'timeout', NULL, NULL, 100)",
    "INSERT INTO observations (provider, kind, value_ms, job_id, observed_at) VALUES ('{p}', 'first_token', 300, '{j}', 100)",
    "INSERT INTO peers (peer_id, address, first_seen, last_seen, failures) VALUES ('12D3KooWv1', '{p}', 1, 2, 0)",
]


def test_a_v1_ledger_upgrades_keeping_only_local_observations(ledger_url):  # noqa: F811
    """v1 chain history means nothing under the v2 contracts: 0002 drops it and keeps what this
    node observed (observations, peers), with the evidence rebuilt from the observations."""
    led = open_ledger(ledger_url)
    try:
        downgrade(led.engine, "0001")
        with led.engine.begin() as conn:
            for sql in V1_ROWS:
                conn.execute(text(sql.format(p=P[0], j=h(1), c=CONSUMER, m=MODEL)))
        assert upgrade(led.engine) is True
        counts = led.counts()
        assert counts["jobs"] == counts["providers"] == counts["seats"] == 0
        assert counts["observations"] == 2 and counts["peers"] == 1
        e = led.evidence()[P[0]]
        assert (e.agreed, e.timeouts, e.latency_sum, e.latency_weight) == (0, pytest.approx(1), 300, 1)
        downgrade(led.engine, "0001")  # and back: the v1 tables, empty, v1 evidence from the observations
        with led.engine.connect() as conn:
            assert conn.execute(text("SELECT timeouts, latency_weight FROM reputation")).one() == (1, 1)
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
        upgrade(led.engine)
    finally:
        led.close()


def test_ledger_from_a_newer_version_is_refused(ledger_url):  # noqa: F811
    open_ledger(ledger_url).close()
    engine = create_engine(ledger_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    with pytest.raises(LedgerError, match="newer version"):
        open_ledger(ledger_url)


def test_default_ledger_is_a_shared_sqlite_file(mesh_home, monkeypatch):
    monkeypatch.delenv("MESH_LEDGER_URL", raising=False)
    led = open_ledger()
    try:
        assert (mesh_home / "ledger.sqlite").exists()
        with led.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
    finally:
        led.close()


def test_ledger_url_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MESH_LEDGER_URL", f"sqlite:///{tmp_path / 'elsewhere.sqlite'}")
    open_ledger().close()
    assert (tmp_path / "elsewhere.sqlite").exists()


def test_unusable_url_is_a_ledger_error(tmp_path):
    with pytest.raises(LedgerError, match="not a database URL"):
        open_ledger("not a url")
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        open_ledger("postgresql+psycopg://nobody@127.0.0.1:1/none")


# ------------------------------------------------------------------------------ chain facts

def test_an_agreed_job_pays_at_once_and_locks_nothing(bound):
    led, c = bound
    job = h(1)
    c.open(job, slot=3)
    c.mine(led)
    j = led.job(job)
    assert (j.status, j.slot, j.group, j.escrow, j.seats, j.open_block) == ("open", 3, OPEN_MARKET, 0, (), c.block - 1)
    c.draw(job)
    c.mine(led)
    j = led.job(job)
    assert j.status == "drawn" and j.escrow == 100 * 10 * 4 and j.drawn_at == c.time - 12
    assert [s.provider for s in j.seats] == P[:3] and all(led.provider(p).locked == 0 for p in P[:3])
    c.settle(job, counts=[40, 40, 40])
    c.mine(led)
    j = led.job(job)
    assert (j.status, j.outcome, j.refund, j.paid) == ("settled", "agreed", 4000 - 1200, 1200)
    assert [(s.outcome, s.token_count, s.paid) for s in j.seats] == [("agreed", 40, 400)] * 3
    p0 = led.provider(P[0])
    assert (p0.stake, p0.locked, p0.owed, p0.earned, p0.jobs) == (10**9, 0, 400, 400, 1)
    earn = {e.provider: e for e in led.earnings()}
    assert (earn[P[0]].jobs_paid, earn[P[0]].tokens, earn[P[0]].earned, earn[P[0]].jury) == (1, 40, 400, 0)
    assert led.provider(P[0]).endpoint.startswith("/ip4/127.0.0.1/tcp/4001/p2p/")


def test_a_contested_job_locks_until_it_resolves_provisionally(bound):
    led, c = bound
    job = h(2)
    c.open(job)
    c.draw(job, seats=P[:4], prices=[10, 10, 10, 12])
    c.mine(led)
    lock = PARAMS.lock_for(100, 10)
    # Seat 3 signed 500 tokens of a 100-token job: slashed whatever happens. 0 and 2 agree.
    c.contest(job, [h(5), h(6), h(5), h(9)], [40, 30, 40, 500], present=0b0111, slashed=0b1000, provisional=0b0101)
    c.mine(led)
    assert [led.provider(p).locked for p in P[:4]] == [lock, lock, lock, PARAMS.lock_for(100, 12)]
    j = led.job(job)
    assert (j.status, j.output_hash, j.contested_at) == ("contested", h(5), c.time - 12)
    c.ev("Slashed", provider=P[3], jobId=job, amount=PARAMS.lock_for(100, 12))
    c.settle(job, "provisional", present=0b0111, paid=[400, 0, 400, 0], slash_mask=0b1000)
    c.mine(led)
    j = led.job(job)
    assert [(s.outcome, s.paid, s.token_count) for s in j.seats] == [
        ("provisional", 400, 40), ("minority", 0, 30), ("provisional", 400, 40), ("slashed", 0, 500)]
    assert all(led.provider(p).locked == 0 for p in P[:4])
    assert led.provider(P[3]).stake == 10**9 - PARAMS.lock_for(100, 12) and led.provider(P[3]).slashed > 0
    assert j.refund == 100 * 10 * 5 - 800 and [s.provider for s in led.slashes()] == [P[3]]


def test_a_disputed_job_is_judged_by_its_jury(bound):
    led, c = bound
    job = h(3)
    c.open(job)
    c.draw(job)
    c.mine(led)
    c.contest(job, [h(5), h(6), h(5)], [40, 40, 0], present=0b111, provisional=0b101)
    c.mine(led)
    c.ev("DisputeOpened", jobId=job, disputer=P[1], bond=1000, request="0x" + b"the request".hex())
    c.mine(led)
    assert led.job(job).status == "disputed"
    c.ev("JuryDrawn", jobId=job, jurors=[P[3], P[4], P[5]])
    c.mine(led)
    for seat in (0, 1):  # seat 2's evidence never comes: a hard fail whatever the votes
        c.ev("EvidencePosted", jobId=job, seat=seat, textHash=h(40 + seat), tokens="0x" + "00" * 160)
    votes = {P[3]: {0: SOFT, 1: PASS, 2: PASS}, P[4]: {0: SOFT, 1: HARD, 2: PASS}, P[5]: {0: HARD, 1: PASS, 2: PASS}}
    for juror in votes:
        c.ev("VoteCommitted", jobId=job, juror=juror)
    c.mine(led)
    for juror, v in votes.items():
        if juror != P[5]:  # the third juror never reveals: unpaid
            c.ev("VoteRevealed", jobId=job, juror=juror, verdicts=pack_verdicts(v))
    c.mine(led)
    lock = PARAMS.lock_for(100, 10)
    c.ev("Slashed", provider=P[2], jobId=job, amount=lock)
    c.settle(job, "judged", present=0b111, paid=[0, 400, 0], slash_mask=0b100, refund=4000 + 1000 - 400 - 1000 - 666)
    c.ev("JuryPaid", jobId=job, jurors=[P[3], P[4], ZERO_ADDRESS], share=333, bondRefund=1000)
    c.mine(led)
    j = led.job(job)
    assert [s.outcome for s in j.seats] == ["soft_fail", "passed", "hard_fail"]
    assert [s.evidence_posted for s in j.seats] == [True, True, False]
    d = j.dispute
    assert (d.disputer, d.bond, d.void, d.share, d.bond_refund) == (P[1], 1000, False, 333, 1000)
    assert d.opened_block == j.open_block + 2 and d.jury_at is not None
    assert [(x.juror, x.committed, x.revealed, x.paid) for x in d.jurors] == [
        (P[3], True, True, 333), (P[4], True, True, 333), (P[5], True, False, 0)]
    assert [r.job_id for r in led.juries(juror=P[4])] == [job]
    p3 = led.provider(P[3])
    assert (p3.owed, p3.earned, p3.jury_earned, p3.jury_duties) == (333, 333, 333, 1)
    assert all(led.provider(p).locked == 0 for p in P[:3])
    earn = {e.provider: e for e in led.earnings()}
    assert earn[P[4]].jury == 333 and earn[P[4]].jobs_paid == 0 and earn[P[1]].jobs_paid == 1
    assert led.counts()["refunds"] == 2  # the consumer's escrow and the disputer's bond


def test_a_void_dispute_leaves_the_provisional_outcome(bound):
    led, c = bound
    job = h(4)
    c.open(job)
    c.draw(job)
    c.contest(job, [h(5), h(6), h(5)], [10, 10, 10], present=0b111, provisional=0b101)
    c.ev("DisputeOpened", jobId=job, disputer=CONSUMER, bond=1000, request="0x00")
    c.mine(led)
    c.ev("JuryDrawn", jobId=job, jurors=[ZERO_ADDRESS] * 3)
    c.settle(job, "provisional", present=0b111, counts=[10, 0, 10], paid=[100, 0, 100])
    c.ev("JuryPaid", jobId=job, jurors=[ZERO_ADDRESS] * 3, share=0, bondRefund=1000)
    c.mine(led)
    j = led.job(job)
    assert j.dispute.void and j.dispute.jurors == () and j.dispute.bond_refund == 1000
    assert [s.outcome for s in j.seats] == ["provisional", "minority", "provisional"]


def test_an_added_seat_and_an_expired_job(bound):
    led, c = bound
    c.open(h(5))
    c.draw(h(5))
    c.mine(led)
    c.add_seat(h(5), P[3], 12)
    c.mine(led)
    j = led.job(h(5))
    assert j.escrow == 100 * 10 * 5 and [(s.provider, s.price, s.added) for s in j.seats][3] == (P[3], 12, True)
    assert led.provider(P[3]).jobs == 1
    c.settle(h(5), present=0b1111, counts=[7, 7, 7, 7])
    c.mine(led)
    assert led.job(h(5)).paid == 7 * (10 + 10 + 10 + 12)
    c.open(h(6), consumer=OTHER_CONSUMER)
    c.mine(led)
    c.ev("JobSettled", jobId=h(6), outcome=3, present=0, paid=[0] * 5, slashMask=0, refund=0)  # expire()
    c.mine(led)
    j = led.job(h(6))
    assert (j.status, j.outcome, j.seats, j.drawn_at, j.refund) == ("refunded", "refunded", (), None, 0)


def test_commit_reveal_and_an_unrevealed_commitment(bound):
    led, c = bound
    job = h(7)
    c.open(job)
    c.draw(job)
    c.mine(led)
    for seat in range(3):
        c.ev("ResultCommitted", jobId=job, seat=seat, provider=P[seat], commitment=h(50 + seat))
    c.mine(led)
    for seat in (0, 1):
        c.ev("ResultRevealed", jobId=job, seat=seat, provider=P[seat], outputHash=h(60), tokenCount=25)
    c.mine(led)
    # finalize: the two reveals agree, seat 2 never revealed (slashed at once, lock taken and burned).
    c.ev("Slashed", provider=P[2], jobId=job, amount=PARAMS.lock_for(100, 10))
    c.settle(job, present=0b011, counts=[25, 25, 0], slash_mask=0b100)
    c.mine(led)
    j = led.job(job)
    assert [(s.outcome, s.committed, s.revealed, s.output_hash) for s in j.seats] == [
        ("agreed", True, True, h(60)), ("agreed", True, True, h(60)), ("slashed", True, False, None)]
    assert j.output_hash == h(60)
    assert led.provider(P[2]).locked == 0 and led.provider(P[2]).stake == 10**9 - PARAMS.lock_for(100, 10)


@pytest.mark.parametrize("outcome, present, slashed, paid, provisional, outputs, verdicts, expected", [
    ("agreed", 0b111, 0, [5, 5, 5], 0, [], [], ["agreed"] * 3),
    ("agreed", 0b011, 0, [5, 5, 0], 0, [], [], ["agreed", "agreed", "missing"]),
    ("agreed", 0b011, 0b100, [5, 5, 0], 0, [], [], ["agreed", "agreed", "slashed"]),
    ("agreed", 0b111, 0, [0, 0, 0], 0, [], [], ["agreed"] * 3),  # agreed on an empty answer
    ("refunded", 0, 0, [0, 0, 0], 0, [], [], ["missing"] * 3),
    ("refunded", 0, 0b001, [0, 0, 0], 0, [], [], ["slashed", "missing", "missing"]),
    ("provisional", 0b111, 0, [5, 0, 5], 0b101, ["a", "b", "a"], [], ["provisional", "minority", "provisional"]),
    ("provisional", 0b011, 0, [0, 0, 0], 0, ["a", "b"], [], ["unconfirmed", "unconfirmed", "missing"]),  # a tie
    ("provisional", 0b111, 0, [5, 0, 0], 0b001, ["a", "b", "a"], [], ["provisional", "minority", "unconfirmed"]),
    ("judged", 0b111, 0b100, [5, 0, 0], 0b101, ["a", "b", "a"], ["pass", "soft", "hard"],
     ["passed", "soft_fail", "hard_fail"]),
    ("judged", 0b011, 0, [0, 0], 0, ["a", "b"], ["pass", "soft"], ["passed", "soft_fail"]),  # 0 tokens: the tally
])
def test_seat_outcomes(outcome, present, slashed, paid, provisional, outputs, verdicts, expected):
    s = Settlement(outcome, len(expected), present, slashed, paid, provisional, outputs, verdicts)
    assert seat_outcomes(s) == expected


def test_the_jury_tally_mirrors_the_contract():
    both = pack_verdicts({0: HARD, 1: SOFT})
    assert tally([both, both, None], 3, 0b11, 0b11) == ["hard", "soft", None, None, None]
    assert tally([both, None, None], 3, 0b11, 0b11)[:2] == ["pass", "pass"]  # one of three is no majority
    assert tally([both], 1, 0b01, 0b11)[:2] == ["hard", "hard"]  # seat 1 showed no evidence
    assert tally([pack_verdicts({0: SOFT}), pack_verdicts({0: HARD})], 2, 0b1, 0b1)[0] == "soft"


def test_stake_lifecycle_mirrors_the_registry(bound):
    led, c = bound
    c.ev("UnstakeRequested", provider=P[0], amount=300, readyAt=c.time + 7 * 86400)
    c.mine(led)
    p = led.provider(P[0])
    assert (p.stake, p.thawing, p.thaw_ready_at) == (10**9 - 300, 300, c.time - 12 + 7 * 86400)
    c.ev("StakeWithdrawn", provider=P[0], amount=300)
    c.ev("ProviderDeregistered", provider=P[0])
    c.register(P[1], group=PRIVATE)
    c.mine(led)
    p = led.provider(P[0])
    assert (p.thawing, p.thaw_ready_at, p.registered) == (0, None, False)
    assert P[0] not in [x.address for x in led.providers(registered=True)]
    assert [x.address for x in led.providers(model_hash=MODEL, group=OPEN_MARKET, registered=True)] == P[2:6]
    assert led.provider(P[1]).group == PRIVATE
    assert [x.address for x in led.candidates(MODEL, 10, 100, group=PRIVATE)] == [P[1]]
    # The draw skips a provider whose seat lock would be more than a quarter of its free stake.
    c.ev("UnstakeRequested", provider=P[2], amount=10**9 - 4 * PARAMS.lock_for(100, 10) + 1, readyAt=c.time)
    c.mine(led)
    assert P[2] not in [x.address for x in led.candidates(MODEL, 10, 100)]
    c.ev("Staked", provider=P[2], amount=1)
    c.mine(led)
    assert P[2] in [x.address for x in led.candidates(MODEL, 10, 100)] and led.candidates(MODEL, 9, 1) == []


def test_amounts_are_exact_integers(bound, ledger_url):  # noqa: F811
    led, c = bound
    big = 2**63 - 1  # the most SQLite stores exactly; PostgreSQL's NUMERIC(78,0) takes any uint256
    c.ev("Staked", provider=P[7], amount=big)
    c.mine(led)
    assert led.provider(P[7]).stake == big and isinstance(led.provider(P[7]).stake, int)
    c.ev("Staked", provider=P[7], amount=1)
    if ledger_url.startswith("sqlite"):
        with pytest.raises(LedgerError, match="PostgreSQL"):
            c.mine(led)  # refused, never rounded through a float
        assert led.provider(P[7]).stake == big and led.cursor().last_block == c.block - 1
    else:
        c.mine(led)
        assert led.provider(P[7]).stake == 2**63


def test_reapplying_a_range_adds_nothing(bound, ledger_url):  # noqa: F811
    led, c = bound
    c.agreed_job(h(4))
    batch = list(c.pending)
    c.mine(led)
    before = (led.counts(), led.provider(P[0]), led.evidence([P[0]]))
    # The cursor has passed the range: a no-op.
    assert led.apply_batch(batch, from_block=batch[0].block_number, to_block=batch[0].block_number,
                           to_hash=h(1)).applied == 0
    # Rewind the cursor (as after a crash between two processes): every log is already stored.
    engine = create_engine(ledger_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE indexer_cursor SET last_block = :b"), {"b": batch[0].block_number - 1})
    engine.dispose()
    res = led.apply_batch(batch + batch, from_block=batch[0].block_number, to_block=batch[0].block_number,
                          to_hash=h(10**6 + batch[0].block_number))
    assert (res.applied, res.skipped) == (0, 6)
    assert (led.counts(), led.provider(P[0]), led.evidence([P[0]])) == before


def test_a_failing_batch_leaves_nothing_behind(bound):
    led, c = bound
    before = (led.counts(), led.cursor().last_block)
    c.open(h(5))
    c.ev("SeatsDrawn", jobId=h(6), seed=h(1), drawnAt=c.time, seats=P[:3], prices=[10] * 3)  # never opened
    with pytest.raises(LedgerError, match="never saw opened"):
        c.mine(led)
    assert (led.counts(), led.cursor().last_block) == before


def test_a_gap_in_blocks_is_refused(bound):
    led, c = bound
    with pytest.raises(LedgerError, match="would be skipped"):
        led.apply_batch([], from_block=c.block + 5, to_block=c.block + 6, to_hash=h(0))


def test_init_cursor_binds_once(led):
    first = led.init_cursor(IDENTITY, PARAMS, start_block=10, parent_hash=h(9))
    other = ChainIdentity(1, h(1), IDENTITY.token, IDENTITY.registry, IDENTITY.market)
    assert led.init_cursor(other, PARAMS, start_block=99, parent_hash=h(98)) == first
    assert led.cursor().identity == IDENTITY and led.cursor().last_block == 9 and led.cursor().params == PARAMS


def test_reset_forgets_the_chain_and_keeps_local_facts(bound):
    led, c = bound
    led.add_local_account(CONSUMER)
    c.agreed_job(h(7))
    c.mine(led)
    led.record_observation(P[0], "timeout", at=c.time)
    led.peer_seen("12D3KooWpeer", P[0])
    assert led.evidence([P[1]])[P[1]].agreed > 0
    led.reset_chain_data()
    counts = led.counts()
    assert led.cursor() is None and counts["jobs"] == counts["providers"] == counts["chain_events"] == 0
    assert counts["observations"] == 1 and counts["peers"] == 1 and led.local_accounts() == [CONSUMER]
    ev = led.evidence()
    assert set(ev) == {P[0]} and ev[P[0]].timeouts == 1 and ev[P[0]].agreed == 0


def test_jobs_query_filters_and_order(bound):
    led, c = bound
    for i in range(5):
        c.open(h(100 + i))
        c.draw(h(100 + i), seats=(P[i % 4], P[(i + 1) % 4], P[(i + 2) % 4]))
        c.mine(led)
    c.settle(h(100))
    c.mine(led)
    assert [j.job_id for j in led.jobs(limit=3)] == [h(104), h(103), h(102)]
    assert [j.job_id for j in led.jobs(status="settled")] == [h(100)]
    assert {j.job_id for j in led.jobs(provider=P[3])} == {h(101), h(102), h(103)}
    assert len(led.jobs(consumer=CONSUMER)) == 5 and led.jobs(consumer=P[0]) == []
    assert led.job(bytes.fromhex(h(101)[2:])).job_id == h(101)
    assert led.job(h(999)) is None


# ------------------------------------------------------------------------------ local facts

def test_observations_fold_into_evidence_and_join_seats(bound):
    led, c = bound
    job = h(8)
    # The consumer measures latency before the indexer has seen the job: the job is its own.
    led.record_observation(P[0], "first_token", 250.0, job_id=job, at=c.time)
    c.agreed_job(job, tokens=3)
    c.mine(led)
    assert led.job(job).seats[0].latency_ms == 250 and led.job(job).local
    led.record_observation(P[1], "first_token", 120.5, job_id=bytes.fromhex(job[2:]), at=c.time)
    assert led.job(job).seats[1].latency_ms == 120
    led.record_observation(P[2], "connect_failure", at=c.time)
    led.record_observation(P[2], "timeout", at=c.time)
    ev = led.evidence([P[0], P[2]])
    assert ev[P[0]].latency_sum == pytest.approx(250.0) and ev[P[0]].latency_weight == pytest.approx(1.0)
    assert ev[P[2]].connect_failures == pytest.approx(1.0) and ev[P[2]].timeouts == pytest.approx(1.0)
    assert ev[P[0]].agreed == pytest.approx(3 / 32)  # a local job: anchored, weighted by its 3 tokens


def test_a_timeout_in_a_job_is_missing_until_the_chain_shows_a_result(bound):
    """This node asked seat 1 and 2 and got nothing: missing answers. Seat 1 then commits its claim:
    it had a result (the network, or this node, failed), so its missing answer is taken back."""
    led, c = bound
    job = h(9)
    c.open(job)
    c.draw(job)
    c.mine(led)
    led.record_observation(P[1], "timeout", job_id=job, at=c.time)
    led.record_observation(P[2], "timeout", job_id=job, at=c.time)
    assert led.evidence([P[1]])[P[1]].missing == pytest.approx(1) and led.job(job).local
    c.ev("ResultCommitted", jobId=job, seat=1, provider=P[1], commitment=h(3))
    c.mine(led)
    c.settle(job, present=0b011, counts=[9, 9, 0])
    c.mine(led)
    ev = led.evidence([P[1], P[2]])
    assert ev[P[1]].missing == pytest.approx(0, abs=1e-9) and ev[P[2]].missing == pytest.approx(1, rel=1e-3)
    led.record_observation(P[1], "timeout", job_id=job, at=c.time)  # after the fact: still not missing
    assert led.evidence([P[1]])[P[1]].missing == pytest.approx(0, abs=1e-9)


def test_observation_input_is_checked(led):
    with pytest.raises(LedgerError, match="unknown observation kind"):
        led.record_observation(P[0], "slow")
    with pytest.raises(LedgerError, match="not an Ethereum address"):
        led.record_observation("0x1234", "timeout")
    with pytest.raises(LedgerError, match="needs its latency"):
        led.record_observation(P[0], "first_token")
    with pytest.raises(LedgerError, match="32-byte"):
        led.record_observation(P[0], "timeout", job_id="0x12")


def test_peers_and_manifests(led):
    led.peer_seen("12D3KooWA", at=100.0)
    led.peer_seen("12D3KooWA", P[0], at=200.0)
    led.peer_failed("12D3KooWA", at=250.0)
    led.peer_failed("12D3KooWB", at=260.0)
    a, = [p for p in led.peers() if p.peer_id == "12D3KooWA"]
    assert (a.address, a.first_seen, a.last_seen, a.failures, a.last_failure) == (P[0], 100.0, 200.0, 1, 250.0)
    assert [p.peer_id for p in led.peers()] == ["12D3KooWB", "12D3KooWA"]
    led.save_manifest(P[0], h(1), "12D3KooWA", ["/ip4/127.0.0.1/tcp/1"], {"model": "m", "price": 10}, fetched_at=1.0)
    led.save_manifest(P[0], h(2), "12D3KooWA", ["/ip4/127.0.0.1/tcp/2"], {"model": "m", "price": 12}, fetched_at=2.0)
    led.save_manifest(P[0], h(1), "12D3KooWA", ["/ip4/127.0.0.1/tcp/3"], {"model": "m", "price": 10}, fetched_at=3.0)
    assert led.manifest(P[0]).multiaddrs == ("/ip4/127.0.0.1/tcp/3",)
    assert led.manifest(P[0], h(2)).body == {"model": "m", "price": 12}
    assert led.manifest(P[1]) is None


# ------------------------------------------------------------------------------ concurrency

WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from meshmarket.ledger import open_ledger
    led = open_ledger({url!r})
    who, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):
        led.record_observation({provider!r}, "first_token", float(i), at=1000.0 + i)
        led.peer_seen(f"{{who}}-{{i % 7}}", at=1000.0 + i)
    led.close()
""")


def test_two_processes_and_this_one_write_at_once(ledger_url, tmp_path):  # noqa: F811
    """A provider node and a CLI share one ledger: nobody fails with 'database is locked'."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), url=ledger_url, provider=P[0]))
    led = open_ledger(ledger_url)  # migrated once here; the writers open it concurrently
    try:
        procs = [subprocess.Popen([sys.executable, str(script), name, "60"], stderr=subprocess.PIPE, text=True)
                 for name in ("a", "b")]
        led.init_cursor(IDENTITY, PARAMS, start_block=10, parent_hash=h(9))
        c = EventChain()
        for i in range(30):  # this process indexes meanwhile
            c.register(P[i % 4])
            c.ev("Staked", provider=P[i % 4], amount=1)
            c.mine(led)
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        counts = led.counts()
        assert counts["observations"] == 120 and counts["peers"] == 14
        assert led.evidence([P[0]])[P[0]].latency_weight == pytest.approx(120, rel=0.01)
        assert sum(led.provider(p).stake for p in P[:4]) == 30
    finally:
        led.close()


def test_fresh_ledger_opened_by_two_processes_migrates_once(ledger_url, tmp_path):  # noqa: F811
    script = tmp_path / "opener.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom meshmarket.ledger import open_ledger\n"
                      f"open_ledger({ledger_url!r}).close()\n")
    procs = [subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert tables(ledger_url) == set(Base.metadata.tables) | {"alembic_version"}
