"""core: PostgreSQL's queue status indexes hold only the rows not yet finished

The claims and the per-conversation checks read ``inbox_items`` and ``outbox_items`` by status for the few rows
still waiting (pending, sending, failed), but the indexes they use held every row ever queued: a message's inbox
row goes in already ``done`` and its reply's outbox row ends ``sent``, so each message cost PostgreSQL two index
insertions per queue for rows no claim reads again, and the indexes grew with the history until retention pruned
it. Partial indexes (``status <> 'done'``, ``status <> 'sent'``) stay as small as the work waiting; the queries
that use them name their statuses as constants (``storage.db.constant``). SQLite keeps whole indexes: it uses a
partial index only for a query that repeats the index's own condition.

Building the new indexes reads each queue table once (a lock on writes while it runs; on a large inbox run
``loket db prune`` first, or upgrade at a quiet hour).

Revision ID: 0007_core
Revises: 0006_core
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_core"
down_revision: str | Sequence[str] | None = "0006_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (  # name, table, columns, the finished status left out
    ("ix_inbox_status_id", "inbox_items", ["status", "id"], "done"),
    ("ix_inbox_key_status", "inbox_items", ["key", "status", "id"], "done"),
    ("ix_outbox_status_id", "outbox_items", ["status", "id"], "sent"),
    ("ix_outbox_key_status", "outbox_items", ["key", "status", "id"], "sent"),
)


def _rebuild(partial: bool) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, columns, finished in _INDEXES:
        op.drop_index(name, table_name=table)
        where = sa.text(f"status <> '{finished}'") if partial else None
        op.create_index(name, table, columns, postgresql_where=where)


def upgrade() -> None:
    _rebuild(partial=True)


def downgrade() -> None:
    _rebuild(partial=False)
