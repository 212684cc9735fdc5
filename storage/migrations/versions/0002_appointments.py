"""appointments and reminders

Revision ID: 0002_appointments
Revises: 0001_core
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_appointments"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = ("appointments",)
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "appt_services",
        sa.Column("id", BigId, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("reminder_stages", sa.JSON(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "appt_providers",
        sa.Column("id", BigId, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("location", sa.String(300), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("working_hours", sa.JSON(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "appointments",
        sa.Column("id", BigId, nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("customer_id", BigId, nullable=False),
        sa.Column("service_id", BigId, nullable=False),
        sa.Column("provider_id", BigId, nullable=False),
        sa.Column("location", sa.String(300), nullable=False),
        sa.Column("start_at", TZ, nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(16), nullable=True),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("escalated_at", TZ, nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_id"),
    )
    op.create_index("ix_appointments_customer", "appointments", ["customer_id", "start_at"])
    op.create_index("ix_appointments_provider_start", "appointments", ["provider_id", "start_at"])
    op.create_index("ix_appointments_start", "appointments", ["start_at"])
    op.create_table(
        "appt_reminders",
        sa.Column("id", BigId, nullable=False),
        sa.Column("appointment_id", BigId, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("due_at", TZ, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("channel", sa.String(16), nullable=True),
        sa.Column("conversation_id", BigId, nullable=True),
        sa.Column("message_id", BigId, nullable=True),
        sa.Column("outcome", sa.String(40), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("fallback", sa.JSON(), nullable=False),
        sa.Column("locked_by", sa.String(120), nullable=True),
        sa.Column("locked_until", TZ, nullable=True),
        sa.Column("sent_at", TZ, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("appointment_id", "stage", name="uq_reminder_appointment_stage"),
    )
    op.create_index("ix_reminders_status_due", "appt_reminders", ["status", "due_at"])
    op.create_index("ix_reminders_message", "appt_reminders", ["message_id"])


def downgrade() -> None:
    op.drop_table("appt_reminders")
    op.drop_table("appointments")
    op.drop_table("appt_providers")
    op.drop_table("appt_services")
