"""Protocol v2: pools per (model, group), drawn seats (up to five), contests, disputes and juries.

The v2 contracts make every v1 chain fact meaningless (other contracts, other events), so the
chain-derived tables are dropped and created anew in their v2 shape, empty: the next `mesh ledger
sync` indexes the v2 deployment from its start. What this node observed itself stays: observations,
peers and manifests are untouched, and the reputation table is rebuilt from the observations
(chain evidence comes back with the sync). New: seats (replacing job_providers and results), disputes,
jurors, and local_accounts (this node's own consumer addresses). Downgrading does the reverse: the
v1 tables come back empty, with the v1 reputation rebuilt from the observations.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

#: Token amounts: exact NUMERIC(78, 0) on PostgreSQL, 64-bit INTEGER on SQLite (see ledger.models.Amount).
#: Spelled out here, not imported, so this version keeps building the same schema if the model changes.
AMOUNT = sa.Numeric(precision=78, scale=0).with_variant(sa.BigInteger(), "sqlite")

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Children before parents (foreign keys).
V1_CHAIN_TABLES = ("payments", "refunds", "slashes", "replacements", "results", "job_providers", "jobs", "providers",
                   "chain_events", "indexer_cursor", "reputation")
V2_CHAIN_TABLES = ("local_accounts", "payments", "refunds", "slashes", "jurors", "disputes", "seats", "jobs",
                   "providers", "chain_events", "indexer_cursor", "reputation")
#: The reputation counters of each version, and the half-life the ledger uses by default.
V1_COUNTERS = ("agreed", "dissent", "slashed", "missing", "replaced", "timeouts", "connect_failures", "latency_sum",
               "latency_weight")
V2_COUNTERS = ("agreed", "passed", "slashed", "failed", "minority", "missing", "timeouts", "connect_failures",
               "latency_sum", "latency_weight")
HALF_LIFE_S = 14 * 24 * 3600.0


def upgrade() -> None:
    for name in V1_CHAIN_TABLES:
        op.drop_table(name)
    _create_v2()
    _fold_observations(V2_COUNTERS, v2=True)


def downgrade() -> None:
    for name in V2_CHAIN_TABLES:
        op.drop_table(name)
    _create_v1()
    _fold_observations(V1_COUNTERS, v2=False)


def _evidence_of(kind: str, value_ms: float | None, job_id: str | None, v2: bool) -> dict[str, float]:
    """ledger.local.observation_evidence as of each version (no seat exists yet: none delivered)."""
    if kind == "connect_failure":
        return {"connect_failures": 1.0}
    if kind == "timeout":
        return {"missing": 1.0} if v2 and job_id is not None else {"timeouts": 1.0}
    return {"latency_sum": float(value_ms or 0.0), "latency_weight": 1.0}


def _fold_observations(counters: Sequence[str], v2: bool) -> None:
    """Rebuild the reputation rows from this node's observations (ledger.evidence.Evidence.add,
    spelled out: each piece weighs 2^(-age / half-life) as of the provider's latest observation)."""
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT provider, kind, value_ms, job_id, observed_at FROM observations "
                                "ORDER BY observed_at, id")).all()
    state: dict[str, dict[str, float]] = {}
    for provider, kind, value_ms, job_id, at in rows:
        at = float(at)
        e = state.setdefault(provider, {"ref_time": at, **{c: 0.0 for c in counters}})
        if at > e["ref_time"]:
            f = 2.0 ** (-(at - e["ref_time"]) / HALF_LIFE_S)
            for c in counters:
                e[c] *= f
            e["ref_time"] = at
        for c, v in _evidence_of(kind, value_ms, job_id, v2).items():
            e[c] += v
    if not state:
        return
    cols = ("provider", "half_life_s", "ref_time", *counters, "jobs")
    stmt = sa.text(f"INSERT INTO reputation ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})")
    conn.execute(stmt, [{"provider": p, "half_life_s": HALF_LIFE_S, "jobs": 0, **e} for p, e in sorted(state.items())])


def _create_v2() -> None:
    op.create_table('providers',
    sa.Column('address', sa.String(length=42), nullable=False),
    sa.Column('registered', sa.Boolean(), nullable=False),
    sa.Column('model_hash', sa.String(length=66), nullable=True),
    sa.Column('group_id', sa.String(length=66), nullable=True),
    sa.Column('manifest_hash', sa.String(length=66), nullable=True),
    sa.Column('price', AMOUNT, nullable=True),
    sa.Column('endpoint', sa.String(length=256), nullable=True),
    sa.Column('stake', AMOUNT, nullable=False),
    sa.Column('locked', AMOUNT, nullable=False),
    sa.Column('thawing', AMOUNT, nullable=False),
    sa.Column('thaw_ready_at', sa.BigInteger(), nullable=True),
    sa.Column('owed', AMOUNT, nullable=False),
    sa.Column('earned', AMOUNT, nullable=False),
    sa.Column('jury_earned', AMOUNT, nullable=False),
    sa.Column('withdrawn', AMOUNT, nullable=False),
    sa.Column('slashed', AMOUNT, nullable=False),
    sa.Column('jobs', sa.BigInteger(), nullable=False),
    sa.Column('jury_duties', sa.BigInteger(), nullable=False),
    sa.Column('registered_at', sa.BigInteger(), nullable=True),
    sa.Column('first_block', sa.BigInteger(), nullable=False),
    sa.Column('last_block', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('address', name=op.f('pk_providers'))
    )
    with op.batch_alter_table('providers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_providers_model_hash_group_id_registered_price'), ['model_hash', 'group_id', 'registered', 'price'], unique=False)

    op.create_table('jobs',
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('consumer', sa.String(length=42), nullable=False),
    sa.Column('slot', sa.SmallInteger(), nullable=False),
    sa.Column('model_hash', sa.String(length=66), nullable=False),
    sa.Column('group_id', sa.String(length=66), nullable=False),
    sa.Column('prompt_hash', sa.String(length=66), nullable=False),
    sa.Column('max_tokens', sa.BigInteger(), nullable=False),
    sa.Column('price_cap', AMOUNT, nullable=False),
    sa.Column('open_block', sa.BigInteger(), nullable=False),
    sa.Column('opened_at', sa.BigInteger(), nullable=False),
    sa.Column('drawn_at', sa.BigInteger(), nullable=True),
    sa.Column('seed', sa.String(length=66), nullable=True),
    sa.Column('seat_count', sa.SmallInteger(), nullable=False),
    sa.Column('escrow', AMOUNT, nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('outcome', sa.String(length=12), nullable=True),
    sa.Column('output_hash', sa.String(length=66), nullable=True),
    sa.Column('present', sa.SmallInteger(), nullable=True),
    sa.Column('provisional', sa.SmallInteger(), nullable=True),
    sa.Column('lied', sa.SmallInteger(), nullable=True),
    sa.Column('slash_mask', sa.SmallInteger(), nullable=True),
    sa.Column('contested_at', sa.BigInteger(), nullable=True),
    sa.Column('refund', AMOUNT, nullable=True),
    sa.Column('settled_at', sa.BigInteger(), nullable=True),
    sa.Column('settled_block', sa.BigInteger(), nullable=True),
    sa.Column('local', sa.Boolean(), nullable=False),
    sa.CheckConstraint("outcome IS NULL OR outcome IN ('agreed', 'provisional', 'judged', 'refunded')", name=op.f('ck_jobs_outcome')),
    sa.CheckConstraint("status IN ('open', 'drawn', 'contested', 'disputed', 'settled', 'refunded')", name=op.f('ck_jobs_status')),
    sa.CheckConstraint('slot BETWEEN 0 AND 15', name=op.f('ck_jobs_slot')),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_consumer_opened_at'), ['consumer', 'opened_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_model_hash'), ['model_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_opened_at'), ['opened_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_status_opened_at'), ['status', 'opened_at'], unique=False)

    op.create_table('seats',
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('seat', sa.SmallInteger(), nullable=False),
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('price', AMOUNT, nullable=False),
    sa.Column('added', sa.Boolean(), nullable=False),
    sa.Column('commitment', sa.String(length=66), nullable=True),
    sa.Column('revealed', sa.Boolean(), nullable=False),
    sa.Column('output_hash', sa.String(length=66), nullable=True),
    sa.Column('token_count', sa.BigInteger(), nullable=True),
    sa.Column('locked', AMOUNT, nullable=False),
    sa.Column('evidence_posted', sa.Boolean(), nullable=False),
    sa.Column('text_hash', sa.String(length=66), nullable=True),
    sa.Column('delivered', sa.Boolean(), nullable=False),
    sa.Column('outcome', sa.String(length=12), nullable=True),
    sa.Column('paid', AMOUNT, nullable=True),
    sa.Column('weight', sa.Double(), nullable=False),
    sa.Column('latency_ms', sa.Integer(), nullable=True),
    sa.Column('settled_at', sa.BigInteger(), nullable=True),
    sa.CheckConstraint("outcome IS NULL OR outcome IN ('agreed', 'provisional', 'minority', 'unconfirmed', 'passed', 'soft_fail', 'hard_fail', 'slashed', 'missing')", name=op.f('ck_seats_outcome')),
    sa.CheckConstraint('seat BETWEEN 0 AND 4', name=op.f('ck_seats_seat')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_seats_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'seat', name=op.f('pk_seats'))
    )
    with op.batch_alter_table('seats', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_seats_provider_job_id'), ['provider', 'job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_seats_provider_settled_at'), ['provider', 'settled_at'], unique=False)

    op.create_table('disputes',
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('disputer', sa.String(length=42), nullable=False),
    sa.Column('bond', AMOUNT, nullable=False),
    sa.Column('request_hash', sa.String(length=66), nullable=False),
    sa.Column('opened_block', sa.BigInteger(), nullable=False),
    sa.Column('opened_at', sa.BigInteger(), nullable=False),
    sa.Column('jury_at', sa.BigInteger(), nullable=True),
    sa.Column('void', sa.Boolean(), nullable=False),
    sa.Column('share', AMOUNT, nullable=True),
    sa.Column('bond_refund', AMOUNT, nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_disputes_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_disputes'))
    )
    with op.batch_alter_table('disputes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_disputes_disputer'), ['disputer'], unique=False)

    op.create_table('jurors',
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('idx', sa.SmallInteger(), nullable=False),
    sa.Column('juror', sa.String(length=42), nullable=False),
    sa.Column('committed', sa.Boolean(), nullable=False),
    sa.Column('revealed', sa.Boolean(), nullable=False),
    sa.Column('verdicts', sa.Integer(), nullable=True),
    sa.Column('paid', AMOUNT, nullable=True),
    sa.CheckConstraint('idx BETWEEN 0 AND 2', name=op.f('ck_jurors_idx')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_jurors_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'idx', name=op.f('pk_jurors'))
    )
    with op.batch_alter_table('jurors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jurors_juror_job_id'), ['juror', 'job_id'], unique=False)

    op.create_table('payments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('kind', sa.String(length=4), nullable=False),
    sa.Column('amount', AMOUNT, nullable=False),
    sa.Column('token_count', sa.BigInteger(), nullable=True),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_time', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.CheckConstraint("kind IN ('seat', 'jury')", name=op.f('ck_payments_kind')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_payments_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments')),
    sa.UniqueConstraint('tx_hash', 'log_index', 'provider', name=op.f('uq_payments_tx_hash_log_index_provider'))
    )
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payments_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_payments_provider_block_time'), ['provider', 'block_time'], unique=False)

    op.create_table('refunds',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('consumer', sa.String(length=42), nullable=False),
    sa.Column('kind', sa.String(length=6), nullable=False),
    sa.Column('amount', AMOUNT, nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_time', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.CheckConstraint("kind IN ('escrow', 'bond')", name=op.f('ck_refunds_kind')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_refunds_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refunds')),
    sa.UniqueConstraint('tx_hash', 'log_index', name=op.f('uq_refunds_tx_hash_log_index'))
    )
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refunds_consumer'), ['consumer'], unique=False)
        batch_op.create_index(batch_op.f('ix_refunds_job_id'), ['job_id'], unique=False)

    op.create_table('slashes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('amount', AMOUNT, nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_time', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_slashes_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_slashes')),
    sa.UniqueConstraint('tx_hash', 'log_index', name=op.f('uq_slashes_tx_hash_log_index'))
    )
    with op.batch_alter_table('slashes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_slashes_block_number'), ['block_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_slashes_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_slashes_provider_block_number'), ['provider', 'block_number'], unique=False)

    op.create_table('chain_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_hash', sa.String(length=66), nullable=False),
    sa.Column('block_time', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.Column('contract', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('args', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chain_events')),
    sa.UniqueConstraint('tx_hash', 'log_index', name=op.f('uq_chain_events_tx_hash_log_index'))
    )
    with op.batch_alter_table('chain_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chain_events_block_number'), ['block_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_chain_events_name'), ['name'], unique=False)

    op.create_table('indexer_cursor',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chain_id', sa.BigInteger(), nullable=False),
    sa.Column('genesis_hash', sa.String(length=66), nullable=False),
    sa.Column('token_address', sa.String(length=42), nullable=False),
    sa.Column('registry_address', sa.String(length=42), nullable=False),
    sa.Column('market_address', sa.String(length=42), nullable=False),
    sa.Column('min_job_lock', AMOUNT, nullable=False),
    sa.Column('collateral_ratio', sa.BigInteger(), nullable=False),
    sa.Column('max_lock_share', sa.BigInteger(), nullable=False),
    sa.Column('weight_cap', AMOUNT, nullable=False),
    sa.Column('start_block', sa.BigInteger(), nullable=False),
    sa.Column('last_block', sa.BigInteger(), nullable=False),
    sa.Column('last_block_hash', sa.String(length=66), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_indexer_cursor_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_indexer_cursor'))
    )

    op.create_table('reputation',
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('half_life_s', sa.Double(), nullable=False),
    sa.Column('ref_time', sa.Double(), nullable=False),
    sa.Column('agreed', sa.Double(), nullable=False),
    sa.Column('passed', sa.Double(), nullable=False),
    sa.Column('slashed', sa.Double(), nullable=False),
    sa.Column('failed', sa.Double(), nullable=False),
    sa.Column('minority', sa.Double(), nullable=False),
    sa.Column('missing', sa.Double(), nullable=False),
    sa.Column('timeouts', sa.Double(), nullable=False),
    sa.Column('connect_failures', sa.Double(), nullable=False),
    sa.Column('latency_sum', sa.Double(), nullable=False),
    sa.Column('latency_weight', sa.Double(), nullable=False),
    sa.Column('jobs', sa.BigInteger(), nullable=False),
    sa.Column('score', sa.Double(), nullable=True),
    sa.Column('scored_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('provider', name=op.f('pk_reputation'))
    )

    op.create_table('local_accounts',
    sa.Column('address', sa.String(length=42), nullable=False),
    sa.Column('added_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('address', name=op.f('pk_local_accounts'))
    )


def _create_v1() -> None:
    op.create_table('providers',
    sa.Column('address', sa.String(length=42), nullable=False),
    sa.Column('registered', sa.Boolean(), nullable=False),
    sa.Column('model_hash', sa.String(length=66), nullable=True),
    sa.Column('manifest_hash', sa.String(length=66), nullable=True),
    sa.Column('price', AMOUNT, nullable=True),
    sa.Column('endpoint', sa.String(length=256), nullable=True),
    sa.Column('stake', AMOUNT, nullable=False),
    sa.Column('locked', AMOUNT, nullable=False),
    sa.Column('thawing', AMOUNT, nullable=False),
    sa.Column('thaw_ready_at', sa.BigInteger(), nullable=True),
    sa.Column('owed', AMOUNT, nullable=False),
    sa.Column('earned', AMOUNT, nullable=False),
    sa.Column('withdrawn', AMOUNT, nullable=False),
    sa.Column('slashed', AMOUNT, nullable=False),
    sa.Column('jobs', sa.BigInteger(), nullable=False),
    sa.Column('registered_at', sa.BigInteger(), nullable=True),
    sa.Column('first_block', sa.BigInteger(), nullable=False),
    sa.Column('last_block', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('address', name=op.f('pk_providers'))
    )
    with op.batch_alter_table('providers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_providers_model_hash_registered_price'), ['model_hash', 'registered', 'price'], unique=False)

    op.create_table('jobs',
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('consumer', sa.String(length=42), nullable=False),
    sa.Column('model_hash', sa.String(length=66), nullable=False),
    sa.Column('prompt_hash', sa.String(length=66), nullable=False),
    sa.Column('max_tokens', sa.BigInteger(), nullable=False),
    sa.Column('price_cap', AMOUNT, nullable=False),
    sa.Column('opened_at', sa.BigInteger(), nullable=False),
    sa.Column('opened_block', sa.BigInteger(), nullable=False),
    sa.Column('escrow', AMOUNT, nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('outcome', sa.String(length=12), nullable=True),
    sa.Column('output_hash', sa.String(length=66), nullable=True),
    sa.Column('refund', AMOUNT, nullable=True),
    sa.Column('settled_at', sa.BigInteger(), nullable=True),
    sa.Column('settled_block', sa.BigInteger(), nullable=True),
    sa.CheckConstraint("outcome IS NULL OR outcome IN ('majority', 'no_majority')", name=op.f('ck_jobs_outcome')),
    sa.CheckConstraint("status IN ('open', 'settled', 'refunded')", name=op.f('ck_jobs_status')),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_consumer_opened_at'), ['consumer', 'opened_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_model_hash'), ['model_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_opened_at'), ['opened_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_status_opened_at'), ['status', 'opened_at'], unique=False)

    op.create_table('job_providers',
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('idx', sa.SmallInteger(), nullable=False),
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('price', AMOUNT, nullable=False),
    sa.CheckConstraint('idx BETWEEN 0 AND 2', name=op.f('ck_job_providers_idx')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_job_providers_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'idx', name=op.f('pk_job_providers'))
    )
    with op.batch_alter_table('job_providers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_providers_provider_job_id'), ['provider', 'job_id'], unique=False)

    op.create_table('results',
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('idx', sa.SmallInteger(), nullable=False),
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('commitment', sa.String(length=66), nullable=True),
    sa.Column('revealed', sa.Boolean(), nullable=False),
    sa.Column('output_hash', sa.String(length=66), nullable=True),
    sa.Column('token_count', sa.BigInteger(), nullable=True),
    sa.Column('paid', AMOUNT, nullable=True),
    sa.Column('latency_ms', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.String(length=8), nullable=True),
    sa.Column('settled_at', sa.BigInteger(), nullable=True),
    sa.CheckConstraint("outcome IS NULL OR outcome IN ('agreed', 'dissent', 'missing', 'slashed')", name=op.f('ck_results_outcome')),
    sa.CheckConstraint('idx BETWEEN 0 AND 2', name=op.f('ck_results_idx')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_results_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'idx', name=op.f('pk_results'))
    )
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_results_provider_settled_at'), ['provider', 'settled_at'], unique=False)

    op.create_table('replacements',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('idx', sa.SmallInteger(), nullable=False),
    sa.Column('old_provider', sa.String(length=42), nullable=False),
    sa.Column('new_provider', sa.String(length=42), nullable=False),
    sa.Column('price', AMOUNT, nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_time', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_replacements_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_replacements')),
    sa.UniqueConstraint('tx_hash', 'log_index', name=op.f('uq_replacements_tx_hash_log_index'))
    )
    with op.batch_alter_table('replacements', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_replacements_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_replacements_old_provider'), ['old_provider'], unique=False)

    op.create_table('payments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('amount', AMOUNT, nullable=False),
    sa.Column('token_count', sa.BigInteger(), nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_time', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_payments_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments')),
    sa.UniqueConstraint('tx_hash', 'log_index', 'provider', name=op.f('uq_payments_tx_hash_log_index_provider'))
    )
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payments_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_payments_provider_block_time'), ['provider', 'block_time'], unique=False)

    op.create_table('refunds',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('consumer', sa.String(length=42), nullable=False),
    sa.Column('amount', AMOUNT, nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_time', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_refunds_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refunds')),
    sa.UniqueConstraint('tx_hash', 'log_index', name=op.f('uq_refunds_tx_hash_log_index'))
    )
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refunds_consumer'), ['consumer'], unique=False)
        batch_op.create_index(batch_op.f('ix_refunds_job_id'), ['job_id'], unique=False)

    op.create_table('slashes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('amount', AMOUNT, nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_time', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_slashes_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_slashes')),
    sa.UniqueConstraint('tx_hash', 'log_index', name=op.f('uq_slashes_tx_hash_log_index'))
    )
    with op.batch_alter_table('slashes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_slashes_block_number'), ['block_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_slashes_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_slashes_provider_block_number'), ['provider', 'block_number'], unique=False)

    op.create_table('chain_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_hash', sa.String(length=66), nullable=False),
    sa.Column('block_time', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.Column('contract', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('args', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chain_events')),
    sa.UniqueConstraint('tx_hash', 'log_index', name=op.f('uq_chain_events_tx_hash_log_index'))
    )
    with op.batch_alter_table('chain_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chain_events_block_number'), ['block_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_chain_events_name'), ['name'], unique=False)

    op.create_table('indexer_cursor',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chain_id', sa.BigInteger(), nullable=False),
    sa.Column('genesis_hash', sa.String(length=66), nullable=False),
    sa.Column('token_address', sa.String(length=42), nullable=False),
    sa.Column('registry_address', sa.String(length=42), nullable=False),
    sa.Column('market_address', sa.String(length=42), nullable=False),
    sa.Column('min_job_lock', AMOUNT, nullable=False),
    sa.Column('collateral_ratio', sa.BigInteger(), nullable=False),
    sa.Column('start_block', sa.BigInteger(), nullable=False),
    sa.Column('last_block', sa.BigInteger(), nullable=False),
    sa.Column('last_block_hash', sa.String(length=66), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_indexer_cursor_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_indexer_cursor'))
    )

    op.create_table('reputation',
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('half_life_s', sa.Double(), nullable=False),
    sa.Column('ref_time', sa.Double(), nullable=False),
    sa.Column('agreed', sa.Double(), nullable=False),
    sa.Column('dissent', sa.Double(), nullable=False),
    sa.Column('slashed', sa.Double(), nullable=False),
    sa.Column('missing', sa.Double(), nullable=False),
    sa.Column('replaced', sa.Double(), nullable=False),
    sa.Column('timeouts', sa.Double(), nullable=False),
    sa.Column('connect_failures', sa.Double(), nullable=False),
    sa.Column('latency_sum', sa.Double(), nullable=False),
    sa.Column('latency_weight', sa.Double(), nullable=False),
    sa.Column('jobs', sa.BigInteger(), nullable=False),
    sa.Column('score', sa.Double(), nullable=True),
    sa.Column('scored_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('provider', name=op.f('pk_reputation'))
    )
