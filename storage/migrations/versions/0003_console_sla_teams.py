"""console: SLA targets per team

Revision ID: 0003_console_sla_teams
Revises: 0002_console
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_console_sla_teams"
down_revision: str | Sequence[str] | None = "0002_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "console_sla_team_policies",
        sa.Column("team_id", BigId, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("first_response_minutes", sa.Integer(), nullable=False),
        sa.Column("resolution_minutes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "priority"),
    )


def downgrade() -> None:
    op.drop_table("console_sla_team_policies")
