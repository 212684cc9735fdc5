"""PostgreSQL's queue status indexes hold only unfinished rows (migration 0007_core), and the message path's
prepared statements use them also in their generic plans: their statuses are constants in the text."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bot.dispatcher import _CLAIMABLE_PG
from bot.pipeline import _CLAIM_PG, _STORE_AND_CHECK_PG
from storage.db import make_engine
from tests.support import asyncpg_dsn

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


async def _queues(conn: asyncpg.Connection, finished: int) -> None:
    """A history of finished rows (a message and its reply each) and a few still waiting."""
    await conn.execute(
        "INSERT INTO inbox_items (channel, provider_message_id, key, payload, status, attempts, received_at) "
        "SELECT 'webchat', 'm' || g, 'webchat:v' || (g % 500), '{}', "
        "CASE WHEN g <= $1 THEN 'done' ELSE 'pending' END, 0, now() FROM generate_series(1, $1 + 5) g", finished)
    conv = await conn.fetchval(
        "WITH c AS (INSERT INTO customers (language, timezone, tags, attributes, opted_out, created_at) "
        "VALUES ('id', 'Asia/Jakarta', '[]', '{}', false, now()) RETURNING id), "
        "i AS (INSERT INTO identities (customer_id, channel, address, verified, unreachable, meta, created_at) "
        "SELECT id, 'webchat', 'v', false, false, '{}', now() FROM c RETURNING id, customer_id) "
        "INSERT INTO conversations (customer_id, identity_id, channel, state, priority, labels, meta, created_at, "
        "updated_at) SELECT customer_id, id, 'webchat', 'bot', 'normal', '[]', '{}', now(), now() FROM i RETURNING id")
    await conn.execute(
        "WITH m AS (INSERT INTO messages (conversation_id, customer_id, channel, direction, author, body, choices, "
        "attachments, status, meta, created_at) SELECT $2, c.customer_id, 'webchat', 'out', 'bot', 'halo', '[]', "
        "'[]', 'sent', '{}', now() FROM conversations c, generate_series(1, $1 + 5) WHERE c.id = $2 RETURNING id) "
        "INSERT INTO outbox_items (message_id, channel, key, status, attempts, next_attempt_at, created_at) "
        "SELECT id, 'webchat', 'webchat:v' || (id % 500), CASE WHEN id <= (SELECT min(id) FROM m) + $1 - 1 "
        "THEN 'sent' ELSE 'pending' END, 0, now(), now() FROM m", finished, conv)
    await conn.execute("ANALYZE inbox_items; ANALYZE outbox_items")


def _reads(plan: str, table: str) -> set[str]:
    """How a plan reads ``table``: the indexes it scans, or "Seq Scan"; never empty for a plan that reads it."""
    found: set[str] = set()
    for line in plan.splitlines():
        m = re.search(rf"(Seq Scan|Index Scan using (\S+)|Index Only Scan using (\S+)|Bitmap Heap Scan) on {table}\b", line)
        if m:
            found.add(m.group(2) or m.group(3) or m.group(1))
    assert found, f"the plan does not read {table}: {plan}"
    return found


async def _generic_plan(conn: asyncpg.Connection, name: str, stmt: Any, dialect: Any, values: dict[str, Any]) -> str:
    """The plan PostgreSQL keeps for ``stmt`` once it is prepared and planned without its parameters' values."""
    compiled = stmt.compile(dialect=dialect)
    params = compiled.construct_params(values)
    args = [params[k] for k in compiled.positiontup]
    prepared = await conn.prepare(str(compiled))
    await conn.execute(f"PREPARE {name} AS {compiled}")
    literals = []  # EXPLAIN takes no parameters: the values as literals of the parameters' types
    for arg, param in zip(args, prepared.get_parameters(), strict=True):
        text = await conn.fetchval(f"SELECT quote_nullable($1::{param.schema}.{param.name})", arg)
        literals.append(f"{text}::{param.schema}.{param.name}")
    rows = await conn.fetch(f"EXPLAIN EXECUTE {name}({', '.join(literals)})")
    return "\n".join(r[0] for r in rows)


async def test_claims_and_checks_read_only_unfinished_rows_in_their_generic_plans(pg_url: str) -> None:
    engine = make_engine(pg_url)
    conn = await asyncpg.connect(asyncpg_dsn(pg_url))
    rows = conn.transaction()  # rolled back at the end: the suite's database stays as it was
    await rows.start()
    try:
        await _queues(conn, 20_000)
        sizes = dict(await conn.fetch(
            "SELECT indexrelname, pg_relation_size(indexrelid) / 8192 FROM pg_stat_user_indexes "
            "WHERE indexrelname IN ('ix_inbox_status_id', 'ix_outbox_status_id', 'inbox_items_pkey')"))
        # 20,000 finished rows in the table, five in the status index: it stays the size of the work waiting
        assert sizes["ix_inbox_status_id"] <= 2 < sizes["inbox_items_pkey"]
        assert sizes["ix_outbox_status_id"] <= 2
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        dialect = engine.dialect
        claim = await _generic_plan(conn, "claim_inbox", _CLAIM_PG, dialect, {"n": 64})
        assert _reads(claim, "inbox_items") <= {"ix_inbox_status_id", "ix_inbox_key_status"}, claim
        claim = await _generic_plan(conn, "claim_outbox", _CLAIMABLE_PG, dialect, {"now": NOW, "n": 64})
        assert _reads(claim, "outbox_items") <= {"ix_outbox_status_id", "ix_outbox_key_status"}, claim
        store = await _generic_plan(conn, "store", _STORE_AND_CHECK_PG, dialect, {
            "channel": ["webchat"], "provider_message_id": ["new-1"], "key": ["webchat:v1"],
            "payload": ['{"text": "halo"}'], "received_at": [NOW]})
        assert _reads(store, "inbox_items") == {"ix_inbox_key_status"}, store
        assert _reads(store, "outbox_items") == {"ix_outbox_key_status"}, store
    finally:
        await rows.rollback()
        await conn.close()
        await engine.dispose()
