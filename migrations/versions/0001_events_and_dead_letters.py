"""events and dead letters

Revision ID: 0001
Revises:
Create Date: 2026-11-22 14:45:57.365369
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('dead_letters',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dead_letters'))
    )
    op.create_index('ix_dead_letters_kind_created_at', 'dead_letters', ['kind', 'created_at'], unique=False)
    op.create_table('events',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('cache', sa.String(length=255), nullable=False),
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('topic_sequence_number', sa.BigInteger(), nullable=False),
    sa.Column('sequence_page', sa.BigInteger(), nullable=True),
    sa.Column('event_timestamp', sa.BigInteger(), nullable=True),
    sa.Column('publish_timestamp', sa.BigInteger(), nullable=True),
    sa.Column('token_id', sa.String(length=255), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('raw_body', sa.Text(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stored_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('source', sa.Enum('webhook', 'subscription', name='event_source'), nullable=False),
    sa.Column('idempotency_key', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    sa.UniqueConstraint('cache', 'topic', 'idempotency_key', name=op.f('uq_events_cache_topic_idempotency_key'))
    )
    op.create_index('ix_events_received_at', 'events', ['received_at'], unique=False)
    op.create_index('ix_events_topic_event_time', 'events', ['cache', 'topic', 'event_timestamp'], unique=False)
    op.create_index('ix_events_topic_sequence', 'events', ['cache', 'topic', 'topic_sequence_number'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_events_topic_sequence', table_name='events')
    op.drop_index('ix_events_topic_event_time', table_name='events')
    op.drop_index('ix_events_received_at', table_name='events')
    op.drop_table('events')
    sa.Enum(name='event_source').drop(op.get_bind(), checkfirst=True)
    op.drop_index('ix_dead_letters_kind_created_at', table_name='dead_letters')
    op.drop_table('dead_letters')
