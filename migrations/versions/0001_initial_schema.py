"""Initial schema: chain facts (events, providers, jobs, results, payments, refunds, slashes,
replacements, cursor), local facts (manifests, peers, observations) and reputation evidence.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-21 05:56:28.557100
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

#: Token amounts: exact NUMERIC(78, 0) on PostgreSQL, 64-bit INTEGER on SQLite (see ledger.models.Amount).
#: Spelled out here, not imported, so this version keeps building the same schema if the model changes.
AMOUNT = sa.Numeric(precision=78, scale=0).with_variant(sa.BigInteger(), "sqlite")

revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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

    op.create_table('manifests',
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('manifest_hash', sa.String(length=66), nullable=False),
    sa.Column('peer_id', sa.String(length=128), nullable=False),
    sa.Column('multiaddrs', sa.JSON(), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('fetched_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('provider', 'manifest_hash', name=op.f('pk_manifests'))
    )
    with op.batch_alter_table('manifests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_manifests_peer_id'), ['peer_id'], unique=False)

    op.create_table('observations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('provider', sa.String(length=42), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('value_ms', sa.Double(), nullable=True),
    sa.Column('job_id', sa.String(length=66), nullable=True),
    sa.Column('observed_at', sa.Double(), nullable=False),
    sa.CheckConstraint("kind IN ('connect_failure', 'timeout', 'first_token')", name=op.f('ck_observations_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_observations'))
    )
    with op.batch_alter_table('observations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_observations_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_observations_provider_observed_at'), ['provider', 'observed_at'], unique=False)

    op.create_table('peers',
    sa.Column('peer_id', sa.String(length=128), nullable=False),
    sa.Column('address', sa.String(length=42), nullable=True),
    sa.Column('first_seen', sa.Double(), nullable=False),
    sa.Column('last_seen', sa.Double(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('last_failure', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('peer_id', name=op.f('pk_peers'))
    )
    with op.batch_alter_table('peers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_peers_address'), ['address'], unique=False)

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



def downgrade() -> None:
    with op.batch_alter_table('slashes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_slashes_provider_block_number'))
        batch_op.drop_index(batch_op.f('ix_slashes_job_id'))
        batch_op.drop_index(batch_op.f('ix_slashes_block_number'))

    op.drop_table('slashes')
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_results_provider_settled_at'))

    op.drop_table('results')
    with op.batch_alter_table('replacements', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_replacements_old_provider'))
        batch_op.drop_index(batch_op.f('ix_replacements_job_id'))

    op.drop_table('replacements')
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refunds_job_id'))
        batch_op.drop_index(batch_op.f('ix_refunds_consumer'))

    op.drop_table('refunds')
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payments_provider_block_time'))
        batch_op.drop_index(batch_op.f('ix_payments_job_id'))

    op.drop_table('payments')
    with op.batch_alter_table('job_providers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_providers_provider_job_id'))

    op.drop_table('job_providers')
    op.drop_table('reputation')
    with op.batch_alter_table('providers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_providers_model_hash_registered_price'))

    op.drop_table('providers')
    with op.batch_alter_table('peers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_peers_address'))

    op.drop_table('peers')
    with op.batch_alter_table('observations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_observations_provider_observed_at'))
        batch_op.drop_index(batch_op.f('ix_observations_job_id'))

    op.drop_table('observations')
    with op.batch_alter_table('manifests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_manifests_peer_id'))

    op.drop_table('manifests')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_status_opened_at'))
        batch_op.drop_index(batch_op.f('ix_jobs_opened_at'))
        batch_op.drop_index(batch_op.f('ix_jobs_model_hash'))
        batch_op.drop_index(batch_op.f('ix_jobs_consumer_opened_at'))

    op.drop_table('jobs')
    op.drop_table('indexer_cursor')
    with op.batch_alter_table('chain_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chain_events_name'))
        batch_op.drop_index(batch_op.f('ix_chain_events_block_number'))

    op.drop_table('chain_events')
