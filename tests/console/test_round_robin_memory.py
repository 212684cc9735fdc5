"""The round robin's memory (agent_console.escalation.last_auto_assignments): each active agent's last
auto-assignment, found in the partial index over the ``assigned`` touchpoints, never by reading the timeline."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_console.escalation import auto_assignment_memory, last_auto_assignments
from storage.db import is_sqlite, make_engine
from storage.models import agents, touchpoints

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


async def _agent(conn: AsyncConnection, email: str, active: bool = True) -> int:
    return int((await conn.execute(insert(agents).values(
        email=email, name=email.split("@")[0], password_hash="x", role="agent", max_chats=5, presence="online",
        language="id", active=active, created_at=NOW).returning(agents.c.id))).scalar_one())


async def _touch(conn: AsyncConnection, kind: str, actor: str) -> int:
    return int((await conn.execute(insert(touchpoints).values(
        customer_id=1, conversation_id=1, kind=kind, channel="webchat", actor=actor, payload={},
        created_at=NOW).returning(touchpoints.c.id))).scalar_one())


async def _plan(conn: AsyncConnection) -> str:
    """The memory's query plan as text. On PostgreSQL sequential scans are priced out, so the plan shows whether an
    index can answer the query at all (a table this small would otherwise be read whole, rightly)."""
    sql = str(auto_assignment_memory().compile(conn.sync_connection, compile_kwargs={"literal_binds": True}))
    if is_sqlite(conn):
        return "\n".join(str(r[-1]) for r in (await conn.execute(text("EXPLAIN QUERY PLAN " + sql))).all())
    await conn.execute(text("SET LOCAL enable_seqscan = off"))  # in the connection's transaction only
    return "\n".join(str(r[0]) for r in (await conn.execute(text("EXPLAIN " + sql))).all())


async def test_each_active_agents_last_auto_assignment_from_the_index(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            ana, budi, gone = (await _agent(conn, "ana@example.com"), await _agent(conn, "budi@example.com"),
                               await _agent(conn, "gone@example.com", active=False))
            first_ana = await _touch(conn, "assigned", f"auto:{ana}")
            last_budi = await _touch(conn, "assigned", f"auto:{budi}")
            last_ana = await _touch(conn, "assigned", f"auto:{ana}")
            await _touch(conn, "assigned", "sari@example.com")  # assigned by hand: not the round robin's
            await _touch(conn, "resolved", f"auto:{budi}")  # another kind
            await _touch(conn, "assigned", f"auto:{gone}")  # an agent no longer active
            for _ in range(200):  # the rest of the timeline
                await _touch(conn, "message_in", "customer")
        async with engine.connect() as conn:
            assert await last_auto_assignments(conn) == {ana: last_ana, budi: last_budi}
            assert first_ana < last_budi < last_ana
            plan = await _plan(conn)
        assert "ix_touchpoints_auto_assigned" in plan, plan
    finally:
        await engine.dispose()
