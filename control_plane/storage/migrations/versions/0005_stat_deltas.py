"""append-only statistics: stat_deltas, and what each outcome credited

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 07:30:00

Ingestion appends per-(cell, hour) deltas instead of a locked read-modify-write of ``stats``;
``stats`` keeps everything written before this migration and becomes the base the rollup folds
deltas into, so the existing data carries over unchanged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stat_deltas",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("experiment", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("arm", sa.String(length=128), nullable=False),
        sa.Column("hour_ms", sa.BigInteger(), nullable=False),
        sa.Column("exposures", sa.Float(), nullable=False),
        sa.Column("reward", sa.Float(), nullable=False),
        sa.Column("decayed_exposures", sa.Float(), nullable=False),
        sa.Column("decayed_reward", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stat_deltas")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("stat_deltas", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stat_deltas_experiment"), ["experiment"], unique=False)
    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credited", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cell", sa.Text(), nullable=True))


def downgrade() -> None:
    # Deltas not yet rolled up would be lost: fold them first (``perch stats rollup``).
    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.drop_column("cell")
        batch_op.drop_column("credited")
    op.drop_table("stat_deltas")
