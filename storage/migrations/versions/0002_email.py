"""email channel tables

Revision ID: 0002_email
Revises: 0001_core
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_email"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = ("email",)
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "email_mailbox_state",
        sa.Column("id", BigId, nullable=False),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("mailbox", sa.String(255), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account", "mailbox", name="uq_email_mailbox"),
    )
    op.create_table(
        "email_messages",
        sa.Column("id", BigId, nullable=False),
        sa.Column("direction", sa.String(4), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("kind", sa.String(24), nullable=True),
        sa.Column("address", sa.String(320), nullable=True),
        sa.Column("subject", sa.String(500), nullable=True),
        sa.Column("mailbox", sa.String(255), nullable=True),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("uid", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("author", sa.String(16), nullable=True),
        sa.Column("loket_message_id", BigId, nullable=True),
        sa.Column("conversation_id", BigId, nullable=True),
        sa.Column("raw_sha256", sa.String(64), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("direction", "message_id", name="uq_email_direction_message_id"),
    )
    op.create_index("ix_email_messages_mailbox_status", "email_messages", ["mailbox", "uidvalidity", "status"])
    op.create_index("ix_email_messages_address", "email_messages", ["address", "direction", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_email_messages_address", table_name="email_messages")
    op.drop_index("ix_email_messages_mailbox_status", table_name="email_messages")
    op.drop_table("email_messages")
    op.drop_table("email_mailbox_state")
