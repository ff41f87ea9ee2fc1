"""one user per anonymous id

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 11:00:00

Before 0003 the edge trusted any X-Perch-User header, so one anonymous id could be stitched to
many users, joining strangers into one person for export and erasure. Keep each anonymous id's
first stitch (earliest, then lowest event id) and make the column unique.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DELETE FROM stitches WHERE event_id IN (
            SELECT s.event_id FROM stitches s WHERE EXISTS (
                SELECT 1 FROM stitches t
                WHERE t.anonymous_hash = s.anonymous_hash
                  AND (t.ts_ms < s.ts_ms OR (t.ts_ms = s.ts_ms AND t.event_id < s.event_id))
            )
        )
        """
    )
    with op.batch_alter_table("stitches", schema=None) as batch_op:
        batch_op.drop_index("ix_stitches_anonymous_hash")
        batch_op.create_index("ix_stitches_anonymous_hash", ["anonymous_hash"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("stitches", schema=None) as batch_op:
        batch_op.drop_index("ix_stitches_anonymous_hash")
        batch_op.create_index("ix_stitches_anonymous_hash", ["anonymous_hash"], unique=False)
