"""The ledger store, one suite run against SQLite and a real PostgreSQL server (tests/pg.py).

Migrations (empty -> head -> base -> head, and no difference between migrations and models),
SQLite's settings for a shared file, how decoded chain events become rows (exact integers,
outcomes, locks), idempotent and atomic batches, local observations, and two processes writing
one ledger at once. Chain events here are built by hand in the indexer's decoded form; the
indexer's own tests (test_indexer.py) feed real Anvil logs through the same path.
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

from ledger import ChainEvent, ChainIdentity, RegistryParams, open_ledger
from ledger.migrate import downgrade, head_revision, upgrade
from ledger.models import Base
from ledger.records import checksum
from ledger.sql import outcomes
from mesh.errors import LedgerError
from tests.pg import ledger_url, pg_cluster, pg_url  # noqa: F401 — fixtures

REPO = Path(__file__).resolve().parent.parent
P = [checksum("0x" + f"{i + 1:02x}" * 20) for i in range(5)]
CONSUMER = checksum("0x" + "c0" * 20)
MODEL = "0x" + "ab" * 32
PARAMS = RegistryParams(min_job_lock=1_000_000, collateral_ratio=2)
IDENTITY = ChainIdentity(31337, "0x" + "00" * 31 + "01", checksum("0x" + "11" * 20), checksum("0x" + "22" * 20),
                         checksum("0x" + "33" * 20))


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


class Chain:
    """Builds ChainEvents as the indexer would decode them, block by block."""

    def __init__(self, start_block: int = 10, start_time: int = 1_700_000_000) -> None:
        self.block = start_block
        self.time = start_time
        self.log = 0
        self.tx = 0
        self.pending: list[ChainEvent] = []

    def ev(self, name: str, **args) -> ChainEvent:
        contract = "market" if name in ("JobOpened", "ProviderReplaced", "ResultCommitted", "ResultRevealed",
                                        "JobSettled") else "registry"
        self.tx += 1
        e = ChainEvent(contract, name, self.block, h(10**6 + self.block), self.time, h(self.tx), self.log, args)
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

    # -- common events
    def register(self, p, price=10):
        return self.ev("ProviderRegistered", provider=p, modelHash=MODEL, manifestHash=h(int(p, 16) % 997),
                       price=price, endpoint=f"/ip4/127.0.0.1/tcp/4001/p2p/{p[2:10]}")

    def open(self, job: str, providers=(P[0], P[1], P[2]), prices=(10, 10, 10), max_tokens=100):
        return self.ev("JobOpened", jobId=job, consumer=CONSUMER, modelHash=MODEL, promptHash=h(7), maxTokens=max_tokens,
                       priceCap=max(prices), openedAt=self.time, providers=list(providers), prices=list(prices))

    def settle(self, job: str, counts, paid, slash_mask=0, outcome=0, output=h(99), refund=0):
        return self.ev("JobSettled", jobId=job, outcome=outcome, outputHash=output, tokenCounts=list(counts),
                       paid=list(paid), slashMask=slash_mask, refund=refund)


@pytest.fixture
def led(ledger_url):  # noqa: F811
    ledger = open_ledger(ledger_url)
    try:
        yield ledger
    finally:
        ledger.close()


@pytest.fixture
def bound(led):
    """A ledger bound to a (pretend) chain with four staked providers."""
    led.init_cursor(IDENTITY, PARAMS, start_block=10, parent_hash=h(10**6 + 9))
    c = Chain()
    for p in P[:4]:
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
        assert diff == [], f"migrations and models differ; write a new version (python -m ledger.migrate revision " \
                           f"--autogenerate -m ...): {diff}"
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

def test_batch_builds_provider_job_and_money_state(bound):
    led, c = bound
    job = h(1)
    c.open(job)
    c.mine(led)
    lock = PARAMS.lock_for(100, 10)
    assert [led.provider(p).locked for p in P[:3]] == [lock] * 3
    assert led.job(job).status == "open" and led.job(job).escrow == 3000
    # Slashed (registry) is logged before JobSettled (market) in the same transaction.
    c.ev("Slashed", provider=P[2], jobId=job, amount=lock)
    c.settle(job, counts=[40, 40, 40], paid=[400, 400, 0], slash_mask=0b100, output=h(5), refund=2200)
    c.mine(led)
    j = led.job(job)
    assert (j.status, j.outcome, j.output_hash, j.refund, j.paid) == ("settled", "majority", h(5), 2200, 800)
    assert [(p.provider, p.outcome, p.token_count, p.paid) for p in j.providers] == [
        (P[0], "agreed", 40, 400), (P[1], "agreed", 40, 400), (P[2], "slashed", 40, 0)]
    p0, p2 = led.provider(P[0]), led.provider(P[2])
    assert (p0.stake, p0.locked, p0.owed, p0.earned, p0.jobs) == (10**9, 0, 400, 400, 1)
    assert (p2.stake, p2.locked, p2.owed, p2.slashed) == (10**9 - lock, 0, 0, lock)
    assert [(s.provider, s.amount) for s in led.slashes()] == [(P[2], lock)]
    earn = {e.provider: e for e in led.earnings()}
    assert (earn[P[0]].jobs_paid, earn[P[0]].tokens, earn[P[0]].earned) == (1, 40, 400)
    assert led.provider(P[0]).endpoint.startswith("/ip4/127.0.0.1/tcp/4001/p2p/")
    ev = led.evidence([P[0], P[2]])
    assert ev[P[0]].agreed == 1 and ev[P[2]].slashed == 1 and ev[P[2]].agreed == 0


def test_stake_lifecycle_mirrors_the_registry(bound):
    led, c = bound
    c.ev("UnstakeRequested", provider=P[0], amount=300, readyAt=c.time + 7 * 86400)
    c.mine(led)
    p = led.provider(P[0])
    assert (p.stake, p.thawing, p.thaw_ready_at) == (10**9 - 300, 300, c.time - 12 + 7 * 86400)
    c.ev("StakeWithdrawn", provider=P[0], amount=300)
    c.ev("ProviderDeregistered", provider=P[0])
    c.mine(led)
    p = led.provider(P[0])
    assert (p.thawing, p.thaw_ready_at, p.registered) == (0, None, False)
    assert P[0] not in [x.address for x in led.providers(registered=True)]
    assert [x.address for x in led.providers(model_hash=MODEL, registered=True, max_price=10)] == P[1:4]


def test_replacement_moves_lock_and_escrow_and_counts_against_the_old_provider(bound):
    led, c = bound
    job = h(2)
    c.open(job)
    c.mine(led)
    c.register(P[3], price=12)
    c.ev("ProviderReplaced", jobId=job, index=1, oldProvider=P[1], newProvider=P[3], price=12)
    c.mine(led)
    j = led.job(job)
    assert [p.provider for p in j.providers] == [P[0], P[3], P[2]] and j.escrow == 100 * (10 + 12 + 10)
    assert led.provider(P[1]).locked == 0 and led.provider(P[3]).locked == PARAMS.lock_for(100, 12)
    c.settle(job, counts=[10, 10, 10], paid=[100, 120, 100], refund=3200 - 320)
    c.mine(led)
    assert led.provider(P[3]).locked == 0 and led.provider(P[3]).owed == 120
    assert led.evidence([P[1]])[P[1]].replaced == 1
    assert [j.job_id for j in led.jobs(provider=P[1])] == [job]  # the replaced provider still sees the job


def test_no_majority_is_a_refund_and_commit_reveal_marks_presence(bound):
    led, c = bound
    job = h(3)
    c.open(job)
    c.mine(led)
    c.ev("ResultCommitted", jobId=job, index=0, provider=P[0], commitment=h(50))
    c.ev("ResultCommitted", jobId=job, index=1, provider=P[1], commitment=h(51))
    c.mine(led)
    c.ev("ResultRevealed", jobId=job, index=0, provider=P[0], outputHash=h(60), tokenCount=0)
    c.ev("ResultRevealed", jobId=job, index=1, provider=P[1], outputHash=h(61), tokenCount=5)
    c.mine(led)
    c.settle(job, counts=[0, 5, 0], paid=[0, 0, 0], outcome=1, output="0x" + "00" * 32, refund=3000)
    c.mine(led)
    j = led.job(job)
    assert (j.status, j.outcome, j.refund) == ("refunded", "no_majority", 3000)
    # P0 revealed an empty answer: present (dissent), not missing, although its count is 0.
    assert [p.outcome for p in j.providers] == ["dissent", "dissent", "missing"]


@pytest.mark.parametrize("outcome, counts, mask, revealed, expected", [
    (0, [5, 5, 5], 0, [0, 0, 0], ["agreed", "agreed", "agreed"]),
    (0, [5, 5, 0], 0, [0, 0, 0], ["agreed", "agreed", "missing"]),
    (0, [5, 7, 5], 0b010, [0, 0, 0], ["agreed", "slashed", "agreed"]),
    (0, [0, 0, 9], 0b100, [0, 0, 0], ["agreed", "agreed", "slashed"]),  # agreed on an empty answer
    (0, [0, 0, 0], 0, [0, 0, 0], ["agreed", "agreed", "agreed"]),
    (1, [5, 6, 0], 0, [0, 0, 0], ["dissent", "dissent", "missing"]),
    (1, [999, 5, 6], 0b001, [0, 0, 0], ["slashed", "dissent", "dissent"]),  # over maxTokens
    (1, [0, 0, 0], 0, [1, 0, 0], ["dissent", "missing", "missing"]),
])
def test_outcomes_from_job_settled(outcome, counts, mask, revealed, expected):
    assert outcomes(outcome, counts, mask, revealed) == expected


def test_amounts_are_exact_integers(bound, ledger_url):  # noqa: F811
    led, c = bound
    big = 2**63 - 1  # the most SQLite stores exactly; PostgreSQL's NUMERIC(78,0) takes any uint256
    c.ev("Staked", provider=P[4], amount=big)
    c.mine(led)
    assert led.provider(P[4]).stake == big and isinstance(led.provider(P[4]).stake, int)
    c.ev("Staked", provider=P[4], amount=1)
    if ledger_url.startswith("sqlite"):
        with pytest.raises(LedgerError, match="PostgreSQL"):
            c.mine(led)  # refused, never rounded through a float
        assert led.provider(P[4]).stake == big and led.cursor().last_block == c.block - 1
    else:
        c.mine(led)
        assert led.provider(P[4]).stake == 2**63


def test_reapplying_a_range_adds_nothing(bound, ledger_url):  # noqa: F811
    led, c = bound
    c.open(h(4))
    c.settle(h(4), counts=[10, 10, 10], paid=[100, 100, 100], refund=2700)
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
    assert (res.applied, res.skipped) == (0, 4)
    assert (led.counts(), led.provider(P[0]), led.evidence([P[0]])) == before


def test_a_failing_batch_leaves_nothing_behind(bound):
    led, c = bound
    before = (led.counts(), led.cursor().last_block)
    c.open(h(5))
    c.settle(h(6), counts=[1, 1, 1], paid=[10, 10, 10])  # a job the ledger never saw opened
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
    assert led.cursor().identity == IDENTITY and led.cursor().last_block == 9


def test_reset_forgets_the_chain_and_keeps_local_facts(bound):
    led, c = bound
    c.open(h(7))
    c.settle(h(7), counts=[10, 10, 10], paid=[100, 100, 100])
    c.mine(led)
    led.record_observation(P[0], "timeout", at=c.time)
    led.peer_seen("12D3KooWpeer", P[0])
    led.reset_chain_data()
    counts = led.counts()
    assert led.cursor() is None and counts["jobs"] == counts["providers"] == counts["chain_events"] == 0
    assert counts["observations"] == 1 and counts["peers"] == 1
    ev = led.evidence()
    assert set(ev) == {P[0]} and ev[P[0]].timeouts == 1 and ev[P[0]].agreed == 0


def test_jobs_query_filters_and_order(bound):
    led, c = bound
    for i in range(5):
        c.open(h(100 + i), providers=(P[i % 4], P[(i + 1) % 4], P[(i + 2) % 4]))
        c.mine(led)
    c.settle(h(100), counts=[1, 1, 1], paid=[10, 10, 10])
    c.mine(led)
    assert [j.job_id for j in led.jobs(limit=3)] == [h(104), h(103), h(102)]
    assert [j.job_id for j in led.jobs(status="settled")] == [h(100)]
    assert {j.job_id for j in led.jobs(provider=P[3])} == {h(101), h(102), h(103)}
    assert len(led.jobs(consumer=CONSUMER)) == 5 and led.jobs(consumer=P[0]) == []
    assert led.job(bytes.fromhex(h(101)[2:])).job_id == h(101)
    assert led.job(h(999)) is None


# ------------------------------------------------------------------------------ local facts

def test_observations_fold_into_evidence_and_join_results(bound):
    led, c = bound
    job = h(8)
    # The consumer measures latency before the indexer has seen the job.
    led.record_observation(P[0], "first_token", 250.0, job_id=job, at=c.time)
    c.open(job)
    c.settle(job, counts=[3, 3, 3], paid=[30, 30, 30])
    c.mine(led)
    assert led.job(job).providers[0].latency_ms == 250
    led.record_observation(P[1], "first_token", 120.5, job_id=bytes.fromhex(job[2:]), at=c.time)
    assert led.job(job).providers[1].latency_ms == 120
    led.record_observation(P[2], "connect_failure", at=c.time)
    led.record_observation(P[2], "timeout", at=c.time)
    ev = led.evidence([P[0], P[2]])
    assert ev[P[0]].latency_sum == pytest.approx(250.0) and ev[P[0]].latency_weight == pytest.approx(1.0)
    assert ev[P[2]].connect_failures == pytest.approx(1.0) and ev[P[2]].timeouts == pytest.approx(1.0)


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
    from ledger import open_ledger
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
        c = Chain()
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
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom ledger import open_ledger\n"
                      f"open_ledger({ledger_url!r}).close()\n")
    procs = [subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert tables(ledger_url) == set(Base.metadata.tables) | {"alembic_version"}
