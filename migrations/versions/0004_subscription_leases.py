"""subscription leases and listeners

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 04:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('subscription_leases',
    sa.Column('cache', sa.String(length=255), nullable=False),
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('holder', sa.String(length=255), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resume_seq', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('resume_page', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('cache', 'topic', name=op.f('pk_subscription_leases'))
    )
    op.create_table('listeners',
    sa.Column('holder', sa.String(length=255), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('holder', name=op.f('pk_listeners'))
    )


def downgrade() -> None:
    op.drop_table('listeners')
    op.drop_table('subscription_leases')
