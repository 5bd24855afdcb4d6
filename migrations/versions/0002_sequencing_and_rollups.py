"""sequencing and rollups

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 14:52:36.604944
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('duplicate_deliveries',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('cache', sa.String(length=255), nullable=False),
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('topic_sequence_number', sa.BigInteger(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_duplicate_deliveries'))
    )
    op.create_index('ix_duplicate_deliveries_topic_received', 'duplicate_deliveries', ['cache', 'topic', 'received_at'], unique=False)
    op.create_table('ingest_batches',
    sa.Column('task_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_ingest_batches'))
    )
    op.create_index('ix_ingest_batches_created_at', 'ingest_batches', ['created_at'], unique=False)
    op.create_table('lost_ranges',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('cache', sa.String(length=255), nullable=False),
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('first_seq', sa.BigInteger(), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.Column('declared_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lost_ranges'))
    )
    op.create_index('ix_lost_ranges_declared_at', 'lost_ranges', ['declared_at'], unique=False)
    op.create_index('ix_lost_ranges_topic_epoch', 'lost_ranges', ['cache', 'topic', 'epoch', 'first_seq'], unique=False)
    op.create_table('rollup_watermarks',
    sa.Column('window_s', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('settled_id', sa.BigInteger(), nullable=False),
    sa.Column('scanned_id', sa.BigInteger(), nullable=False),
    sa.Column('unsettled_xids', postgresql.ARRAY(sa.BigInteger()), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('window_s', 'source', name=op.f('pk_rollup_watermarks'))
    )
    op.create_table('rollups',
    sa.Column('cache', sa.String(length=255), nullable=False),
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('window_s', sa.Integer(), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('events', sa.BigInteger(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('first_seq', sa.BigInteger(), nullable=True),
    sa.Column('last_seq', sa.BigInteger(), nullable=True),
    sa.Column('out_of_order', sa.BigInteger(), nullable=False),
    sa.Column('resets', sa.BigInteger(), nullable=False),
    sa.Column('duplicates', sa.BigInteger(), nullable=False),
    sa.Column('gaps', sa.BigInteger(), nullable=False),
    sa.Column('lost', sa.BigInteger(), nullable=False),
    sa.Column('distinct_tokens', sa.BigInteger(), nullable=False),
    sa.Column('publish_latency_p50_ms', sa.Float(), nullable=True),
    sa.Column('publish_latency_p95_ms', sa.Float(), nullable=True),
    sa.Column('publish_latency_p99_ms', sa.Float(), nullable=True),
    sa.Column('receive_latency_p50_ms', sa.Float(), nullable=True),
    sa.Column('receive_latency_p95_ms', sa.Float(), nullable=True),
    sa.Column('receive_latency_p99_ms', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('cache', 'topic', 'window_s', 'window_start', name=op.f('pk_rollups'))
    )
    op.create_index('ix_rollups_unpublished', 'rollups', ['window_s', 'window_start'], unique=False, postgresql_where=sa.text('published_at IS NULL'))
    op.create_index('ix_rollups_window_start', 'rollups', ['window_start'], unique=False)
    op.create_table('topic_cursors',
    sa.Column('cache', sa.String(length=255), nullable=False),
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('state', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('newest_received_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('cache', 'topic', name=op.f('pk_topic_cursors'))
    )
    op.add_column('events', sa.Column('epoch', sa.Integer(), nullable=True))
    op.add_column('events', sa.Column('arrival', sa.String(length=16), nullable=True))
    op.create_index('ix_events_topic_epoch_sequence', 'events', ['cache', 'topic', 'epoch', 'topic_sequence_number'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_events_topic_epoch_sequence', table_name='events')
    op.drop_column('events', 'arrival')
    op.drop_column('events', 'epoch')
    op.drop_table('topic_cursors')
    op.drop_index('ix_rollups_window_start', table_name='rollups')
    op.drop_index('ix_rollups_unpublished', table_name='rollups', postgresql_where=sa.text('published_at IS NULL'))
    op.drop_table('rollups')
    op.drop_table('rollup_watermarks')
    op.drop_index('ix_lost_ranges_topic_epoch', table_name='lost_ranges')
    op.drop_index('ix_lost_ranges_declared_at', table_name='lost_ranges')
    op.drop_table('lost_ranges')
    op.drop_index('ix_ingest_batches_created_at', table_name='ingest_batches')
    op.drop_table('ingest_batches')
    op.drop_index('ix_duplicate_deliveries_topic_received', table_name='duplicate_deliveries')
    op.drop_table('duplicate_deliveries')
