"""core: the timeline (touchpoints) without foreign keys

Touchpoints are an append-only log written in the same transaction as the customer, conversation and message
they name; none of those rows is ever deleted. Checking the two foreign keys cost a lookup and a row lock per
key and touchpoint (about four touchpoints per message): on PostgreSQL, 16-22 % of the database CPU per
routed message (BENCHMARKS.md). Integrity is asserted by the tests instead (no touchpoint names a missing
customer or conversation).

Revision ID: 0004_core
Revises: 0003_core
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_core"
down_revision: str | Sequence[str] | None = "0003_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite's foreign keys have no names: batch mode names them by this convention when it reflects the table.
_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_KEYS = (("customer_id", "customers", "touchpoints_customer_id_fkey"),
         ("conversation_id", "conversations", "touchpoints_conversation_id_fkey"))


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("touchpoints", naming_convention=_NAMES) as batch_op:
            for column, table, _ in _KEYS:
                batch_op.drop_constraint(f"fk_touchpoints_{column}_{table}", type_="foreignkey")
    else:
        for _, _, name in _KEYS:
            op.drop_constraint(name, "touchpoints", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("touchpoints", naming_convention=_NAMES) as batch_op:
            for column, table, _ in _KEYS:
                batch_op.create_foreign_key(f"fk_touchpoints_{column}_{table}", table, [column], ["id"])
    else:
        for column, table, name in _KEYS:
            op.create_foreign_key(name, "touchpoints", table, [column], ["id"])
