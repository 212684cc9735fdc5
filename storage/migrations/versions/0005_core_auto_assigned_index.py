"""core: an index for the console's round robin (each agent's last auto-assignment)

The escalation loop asks on every tick which agent was auto-assigned least recently. It read every ``assigned``
touchpoint to find out, and with no index on ``kind`` that was the whole timeline (four rows per message) twice a
second. A partial index over the ``assigned`` touchpoints only, by ``(actor, id)``, answers it with one index
lookup per agent and costs nothing when the other kinds are written.

Revision ID: 0005_core
Revises: 0004_core
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_core"
down_revision: str | Sequence[str] | None = "0004_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("kind = 'assigned'")


def upgrade() -> None:
    op.create_index("ix_touchpoints_auto_assigned", "touchpoints", ["actor", "id"], postgresql_where=_WHERE,
                    sqlite_where=_WHERE)


def downgrade() -> None:
    op.drop_index("ix_touchpoints_auto_assigned", table_name="touchpoints")
