"""signals, user attributes and profiles

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 16:15:00

The identity and profile layer: behavioural signals from the edge, attributes a site states about
its visitors, the profiles built from both, and the builder's state. New tables only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signals",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("unit_hash", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_signals")),
        sa.UniqueConstraint("event_id", name=op.f("uq_signals_event_id")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_signals_unit_hash"), "signals", ["unit_hash"], unique=False)
    op.create_table(
        "user_attributes",
        sa.Column("unit_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=16), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("unit_hash", "name", name=op.f("pk_user_attributes")),
    )
    op.create_table(
        "profiles",
        sa.Column("unit_hash", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=16), nullable=False),
        sa.Column("doc", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("published_digest", sa.String(length=64), nullable=True),
        sa.Column("built_ms", sa.BigInteger(), nullable=False),
        sa.Column("dnp", sa.Boolean(), nullable=False),
        sa.Column("cluster", sa.String(length=16), nullable=True),
        sa.Column("due", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("unit_hash", name=op.f("pk_profiles")),
    )
    op.create_index(op.f("ix_profiles_built_ms"), "profiles", ["built_ms"], unique=False)
    op.create_index(op.f("ix_profiles_cluster"), "profiles", ["cluster"], unique=False)
    op.create_index(op.f("ix_profiles_due"), "profiles", ["due"], unique=False)
    op.create_table(
        "profile_state",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_profile_state")),
    )


def downgrade() -> None:
    op.drop_table("profile_state")
    op.drop_index(op.f("ix_profiles_due"), table_name="profiles")
    op.drop_index(op.f("ix_profiles_cluster"), table_name="profiles")
    op.drop_index(op.f("ix_profiles_built_ms"), table_name="profiles")
    op.drop_table("profiles")
    op.drop_table("user_attributes")
    op.drop_index(op.f("ix_signals_unit_hash"), table_name="signals")
    op.drop_table("signals")
