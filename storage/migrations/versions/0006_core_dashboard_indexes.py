"""core: indexes for the supervisor dashboard's window (messages by date, breaches and hand-overs)

The dashboard counts a window's customer messages, SLA breaches and hand-overs. Without an index on the dates each
of those read the whole table (``messages``: two rows per message; ``touchpoints``: about four), however short the
window. Both indexes on ``touchpoints`` are partial, over the few kinds the dashboard counts, so writing the
other kinds costs nothing. On PostgreSQL ``messages`` gets a block-range (BRIN) index on ``created_at``: messages
are appended in time order and never deleted, so each range of pages holds a narrow span of dates; the index is a
few pages, and a new row does not touch it until the range is summarised (by VACUUM, which the upkeep pass runs).
SQLite has no block-range index, and a B-tree would cost every message an insertion on the hot path.

Revision ID: 0006_core
Revises: 0005_core
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_core"
down_revision: str | Sequence[str] | None = "0005_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# as in storage.models (SLA_BREACHED, HANDOFFS), where the dashboard's queries use the same conditions
_BREACHED = sa.text("kind = 'sla_breached'")
_HANDOFFS = sa.text("kind IN ('escalated', 'assigned')")


def upgrade() -> None:
    op.create_index("ix_touchpoints_sla_breached", "touchpoints", ["created_at"], postgresql_where=_BREACHED,
                    sqlite_where=_BREACHED)
    op.create_index("ix_touchpoints_handoffs", "touchpoints", ["created_at", "conversation_id"],
                    postgresql_where=_HANDOFFS, sqlite_where=_HANDOFFS)
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_messages_created_brin", "messages", ["created_at"], postgresql_using="brin")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_messages_created_brin", table_name="messages")
    op.drop_index("ix_touchpoints_handoffs", table_name="touchpoints")
    op.drop_index("ix_touchpoints_sla_breached", table_name="touchpoints")
