"""The supervisor dashboard's figures (agent_console/dashboard.py), counted by the database, on a known history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from agent_console.dashboard import BREACHES, HANDED_OVER, MESSAGES_IN, charts, read
from bot.appointments.models import appointments_t
from storage.db import make_engine
from storage.models import agents, conversations, customers, identities, messages, touchpoints


async def _seed(conn: Any, now: datetime) -> None:
    agent_ids = []
    for name, active in (("Ana", True), ("Budi", True), ("Citra", False)):
        agent_ids.append((await conn.execute(insert(agents).returning(agents.c.id), [{
            "email": f"{name.lower()}@example.com", "name": name, "password_hash": "x", "role": "agent",
            "max_chats": 5, "presence": "online", "language": "id", "active": active, "created_at": now}])).scalar_one())
    ana, budi, _ = agent_ids

    async def conversation(channel: str, age_days: float, **values: Any) -> int:
        at = now - timedelta(days=age_days)
        cust = (await conn.execute(insert(customers).returning(customers.c.id), [{
            "display_name": channel, "language": "id", "timezone": "Asia/Jakarta", "tags": [], "attributes": {},
            "opted_out": False, "created_at": at}])).scalar_one()
        ident = (await conn.execute(insert(identities).returning(identities.c.id), [{
            "customer_id": cust, "channel": channel, "address": f"{channel}-{age_days}", "verified": False,
            "unreachable": False, "meta": {}, "created_at": at}])).scalar_one()
        row = {"customer_id": cust, "identity_id": ident, "channel": channel, "state": "bot", "priority": "normal",
               "labels": [], "meta": {}, "created_at": at, "updated_at": at, "queued_at": at, "assignee_id": None,
               "first_response_at": None, "resolved_at": None, "csat_score": None, **values}
        return int((await conn.execute(insert(conversations).returning(conversations.c.id), [row])).scalar_one())

    async def message(conv: int, channel: str, direction: str, at: datetime) -> None:
        await conn.execute(insert(messages), [{
            "conversation_id": conv, "customer_id": 1, "channel": channel, "direction": direction,
            "author": "customer" if direction == "in" else "bot", "body": "", "choices": [], "attachments": [],
            "status": "received", "meta": {}, "created_at": at}])

    async def touch(conv: int, kind: str, at: datetime) -> None:
        await conn.execute(insert(touchpoints), [{
            "customer_id": 1, "conversation_id": conv, "kind": kind, "channel": "x", "actor": "system",
            "payload": {}, "created_at": at}])

    day1, day2, day3, day4 = (now - timedelta(days=d) for d in (1, 2, 3, 4))
    # resolved by the bot alone, an hour after it was queued, CSAT 3
    c1 = await conversation("whatsapp", 1, state="resolved", resolved_at=day1 + timedelta(minutes=60), csat_score=3)
    # resolved after an agent took it; its SLA episode started 5 minutes after it was queued
    start = day2 + timedelta(minutes=5)
    c2 = await conversation("telegram", 2, state="resolved", meta={"sla": {"start": start.isoformat()}},
                            first_response_at=start + timedelta(minutes=5), resolved_at=start + timedelta(minutes=30),
                            csat_score=5)
    c3 = await conversation("webchat", 3, state="assigned", assignee_id=ana, first_response_at=day3 + timedelta(minutes=20))
    c5 = await conversation("email", 4, state="pending_customer", assignee_id=budi)
    old = await conversation("webchat", 40, state="resolved", resolved_at=now - timedelta(days=39), csat_score=1)
    await touch(c2, "escalated", day2)
    await touch(c2, "assigned", day2)
    await touch(c3, "sla_breached", day3)
    await touch(old, "sla_breached", now - timedelta(days=40))
    three_am, two_pm = (now - timedelta(days=2)).replace(hour=3, minute=15), (now - timedelta(days=2)).replace(hour=14, minute=10)
    for conv, channel, direction, at in (
            (c1, "whatsapp", "in", three_am), (c1, "whatsapp", "in", three_am + timedelta(minutes=1)),
            (c1, "whatsapp", "out", three_am + timedelta(minutes=2)), (c2, "telegram", "in", two_pm),
            (c3, "webchat", "in", two_pm + timedelta(minutes=3)), (c5, "email", "out", two_pm),
            (old, "webchat", "in", now - timedelta(days=40))):
        await message(conv, channel, direction, at)


async def test_the_figures_of_a_known_month(db_url: str) -> None:
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            await _seed(conn, now)
        async with engine.connect() as conn:
            fig = await read(conn, now - timedelta(days=30), now)
    finally:
        await engine.dispose()
    assert fig.stats == {
        "conversations": 4,  # the one 40 days old is out of the window
        "deflection": 25.0,  # of 2 resolved, one never went to a person: 1 of 4
        "first_response_avg": 12.5,  # 5 min (from the SLA episode's start) and 20 min (from the queue)
        "resolution_avg": 45.0,  # 60 and 30 min
        "breaches": 1,
        "csat_avg": 4.0,
        "csat_count": 2,
    }
    assert fig.csat == {3: 1, 5: 1}
    assert fig.load == [("Ana", 1), ("Budi", 1)]  # the inactive agent is not charted
    assert fig.appointments is None  # a desk without appointments gets no appointment charts
    # customer messages only, in the window, counted per channel and per hour (UTC) by the database
    assert fig.by_channel == {"whatsapp": 2, "telegram": 1, "webchat": 1}
    assert fig.by_hour == {3: 2, 14: 2}
    drawn = charts(fig)
    assert [(b["label"], b["value"]) for b in drawn["hour"]["bars"] if b["value"]] == [("03", 2), ("14", 2)]
    assert len(drawn["hour"]["bars"]) == 24 and "appointments" not in drawn
    # every bar's value is drawn above it inside the chart (the tallest one's too: 2 px over the bar, 10 px text)
    assert all(b["y"] - 2 >= 12 for c in drawn.values() for b in c["bars"] if b["value"])


async def test_appointments_of_the_window_are_charted(db_url: str) -> None:
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            for i, (status, age_days) in enumerate((("confirmed", 2), ("confirmed", 3), ("no_show", 5),
                                                    ("cancelled", 6), ("done", 45))):
                at = now - timedelta(days=age_days)
                await conn.execute(insert(appointments_t), [{
                    "external_id": f"A-{i}", "customer_id": 100 + i % 2, "service_id": 1, "provider_id": 1,
                    "location": "", "start_at": at, "timezone": "Asia/Jakarta", "status": status, "channel": None,
                    "language": "id", "source": "import", "meta": {}, "created_at": at, "updated_at": at}])
        async with engine.connect() as conn:
            fig = await read(conn, now - timedelta(days=30), now)
    finally:
        await engine.dispose()
    assert fig.appointments is not None
    # the window's appointments by status (the one 45 days ago is out of it)
    assert fig.appointments["status"] == [("confirmed", 2), ("cancelled", 1), ("no_show", 1)]
    months = fig.appointments["months"]
    assert len(months) == 12 and sum(n for _, n in months) >= 2  # patients per month over the last year
    assert "appointments" in charts(fig) and "patients" in charts(fig)


async def _plan(conn: Any, stmt: Any, since: datetime) -> str:
    """The database's plan of one of the dashboard's statements, as text naming the indexes it reads."""
    compiled = stmt.compile(dialect=conn.dialect)
    params = compiled.construct_params({"since": since})
    args = tuple(params[k] for k in compiled.positiontup)
    if conn.dialect.name == "sqlite":
        rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", args)
        return " | ".join(str(r[-1]) for r in rows)
    await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a test table is small enough to read whole
    rows = await conn.exec_driver_sql(f"EXPLAIN {compiled}", args)
    return " | ".join(str(r[0]) for r in rows)


async def test_a_window_is_read_through_the_dashboard_indexes(db_url: str) -> None:
    """The window's breaches and hand-overs come from the timeline's partial indexes, and on PostgreSQL the
    window's customer messages from the block-range index on their date: a short window does not read the whole
    history (0006_core)."""
    engine = make_engine(db_url)
    since = datetime.now(UTC) - timedelta(days=7)
    try:
        async with engine.begin() as conn:
            assert "ix_touchpoints_sla_breached" in await _plan(conn, BREACHES, since)
            assert "ix_touchpoints_handoffs" in await _plan(conn, HANDED_OVER, since)
            if conn.dialect.name == "postgresql":
                assert "ix_messages_created_brin" in await _plan(conn, MESSAGES_IN, since)
            await _seed(conn, datetime.now(UTC))  # and the figures read through them are the same
            assert (await conn.execute(BREACHES, {"since": since})).scalar_one() == 1
    finally:
        await engine.dispose()
