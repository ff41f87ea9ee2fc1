"""revoked dashboard sessions

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 11:30:00

Logout ends the session on the server too: a copied cookie stops working at once, not at expiry.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revoked_sessions",
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("expires_s", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_revoked_sessions")),
    )
    with op.batch_alter_table("revoked_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_revoked_sessions_expires_s"), ["expires_s"], unique=False)


def downgrade() -> None:
    op.drop_table("revoked_sessions")
