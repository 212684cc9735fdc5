"""core: indexes that keep the inbox and outbox claims proportional to the batch, not to the backlog

The router claims the oldest pending item of each conversation key and the dispatcher the oldest unsent row
of each key: both walk pending rows in id order (``status, id``) and check "no older unsent row of this key"
with one index seek (``key, status``).

Revision ID: 0003_core
Revises: 0001_core
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_core"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_items") as batch_op:
        batch_op.drop_index("ix_outbox_status_next")
        batch_op.drop_index("ix_outbox_items_key")
        batch_op.create_index("ix_outbox_status_id", ["status", "id"], unique=False)
        batch_op.create_index("ix_outbox_key_status", ["key", "status", "id"], unique=False)
    with op.batch_alter_table("inbox_items") as batch_op:
        batch_op.drop_index("ix_inbox_key_status")
        batch_op.create_index("ix_inbox_key_status", ["key", "status", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("inbox_items") as batch_op:
        batch_op.drop_index("ix_inbox_key_status")
        batch_op.create_index("ix_inbox_key_status", ["key", "status"], unique=False)
    with op.batch_alter_table("outbox_items") as batch_op:
        batch_op.drop_index("ix_outbox_key_status")
        batch_op.drop_index("ix_outbox_status_id")
        batch_op.create_index("ix_outbox_items_key", ["key"], unique=False)
        batch_op.create_index("ix_outbox_status_next", ["status", "next_attempt_at"], unique=False)
