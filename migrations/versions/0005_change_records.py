"""change records and the per-item guard

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 06:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('change_records',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('source', sa.String(length=100), nullable=False),
    sa.Column('table_name', sa.String(length=255), nullable=False),
    sa.Column('item_key', sa.Text(), nullable=False),
    sa.Column('op', sa.String(length=8), nullable=False),
    sa.Column('event_name', sa.String(length=8), nullable=True),
    sa.Column('seq', sa.Numeric(precision=40, scale=0), nullable=False),
    sa.Column('keys', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('new_image', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('old_image', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('applied', sa.Boolean(), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stored_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_change_records')),
    sa.UniqueConstraint('source', 'idempotency_key', name=op.f('uq_change_records_source_idempotency_key'))
    )
    op.create_index('ix_change_records_item_seq', 'change_records', ['source', 'table_name', 'item_key', 'seq'], unique=False)
    op.create_index('ix_change_records_received_at', 'change_records', ['received_at'], unique=False)
    op.create_table('change_items',
    sa.Column('source', sa.String(length=100), nullable=False),
    sa.Column('table_name', sa.String(length=255), nullable=False),
    sa.Column('item_key', sa.Text(), nullable=False),
    sa.Column('seq', sa.Numeric(precision=40, scale=0), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('record_id', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('source', 'table_name', 'item_key', name=op.f('pk_change_items'))
    )


def downgrade() -> None:
    op.drop_table('change_items')
    op.drop_index('ix_change_records_received_at', table_name='change_records')
    op.drop_index('ix_change_records_item_seq', table_name='change_records')
    op.drop_table('change_records')
