"""snapshot global allocation column

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 11:40:00

Reports chart every snapshot's global allocation. It lived only at the start of the summary JSON,
which grows with segments x arms, so reports read a prefix and parsed segment 0 out of it. The
column holds that allocation on its own; existing rows are filled from their summaries.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Summaries can be megabytes each: a bounded page of them at a time.
_PAGE = 100

# The table as this revision knows it (the application's schema moves on; this must not).
_snapshots = sa.table(
    "snapshots",
    sa.column("experiment", sa.String),
    sa.column("version", sa.BigInteger),
    sa.column("summary", sa.Text),
    sa.column("global_allocation", sa.Text),
)


def _global_allocation(summary: str) -> str | None:
    """Segment 0's allocation as JSON, or None where a report would have found none."""
    try:
        doc: Any = json.loads(summary)
    except ValueError:
        return None  # an unreadable summary must not stop the upgrade; reports skip it
    segments = doc.get("segments") if isinstance(doc, dict) else None
    first = segments[0] if isinstance(segments, list) and segments else None
    allocation = first.get("allocation") if isinstance(first, dict) else None
    return json.dumps(allocation) if isinstance(allocation, dict) else None


def upgrade() -> None:
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("global_allocation", sa.Text(), nullable=True))
    conn = op.get_bind()
    after: tuple[str, int] | None = None
    while True:
        query = (
            sa.select(_snapshots.c.experiment, _snapshots.c.version, _snapshots.c.summary)
            .where(_snapshots.c.summary.is_not(None))
            .order_by(_snapshots.c.experiment, _snapshots.c.version)
            .limit(_PAGE)
        )
        if after is not None:
            query = query.where(sa.tuple_(_snapshots.c.experiment, _snapshots.c.version) > sa.tuple_(*after))
        page = conn.execute(query).all()
        for experiment, version, summary in page:
            allocation = _global_allocation(summary)
            if allocation is not None:
                conn.execute(
                    _snapshots.update()
                    .where(_snapshots.c.experiment == experiment, _snapshots.c.version == version)
                    .values(global_allocation=allocation)
                )
        if len(page) < _PAGE:
            return
        after = (page[-1][0], page[-1][1])


def downgrade() -> None:
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.drop_column("global_allocation")
