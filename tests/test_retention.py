"""Retention of finished work-queue rows (bot/retention.py, bot/housekeeping.py, `loket db prune`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from agent_console.auth import create_session, record_attempt
from agent_console.models import console_sessions, login_attempts
from bot.api.models import webhook_deliveries, webhook_subscriptions
from bot.cli import app
from bot.config import ConfigError, Settings
from bot.retention import LOCK_KEY as RETENTION_LOCK
from bot.retention import RetentionPolicy, prune, rules
from storage.db import make_engine
from storage.models import agents, inbox_items, messages, outbox_items, touchpoints
from storage.schema import upgrade
from tests.support import LoketServer, WebChatClient, asyncpg_dsn, cli_env, scrape, wait_for

DAY = timedelta(days=1)


async def _count(engine: AsyncEngine, table: Any, *where: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def _ids(engine: AsyncEngine, table: Any) -> list[int]:
    async with engine.connect() as conn:
        return [r[0] for r in (await conn.execute(select(table.c.id).order_by(table.c.id))).all()]


async def _chat(loket: LoketServer, n: int) -> None:
    """n customer messages through the web chat, each answered (real inbox, outbox, messages and timeline rows)."""
    async with WebChatClient(loket.base_url) as chat:
        for i in range(n):
            await chat.say(f"pertanyaan nomor {i}")
    await wait_for(lambda: _all_sent(loket.rt.engine), what="every reply sent")


async def _all_sent(engine: AsyncEngine) -> bool:
    return await _count(engine, outbox_items, outbox_items.c.status != "sent") == 0


async def _inbox(engine: AsyncEngine, pmid: str, status: str, at: datetime) -> int:
    async with engine.begin() as conn:
        return int((await conn.execute(insert(inbox_items).returning(inbox_items.c.id), [{
            "channel": "webchat", "provider_message_id": pmid, "key": f"webchat:{pmid}", "payload": {},
            "status": status, "attempts": 1, "last_error": None, "received_at": at,
            "processed_at": at if status == "done" else None}])).scalar_one())


async def _seed_other_tables(engine: AsyncEngine, now: datetime) -> dict[str, Any]:
    """Webhook deliveries, console sessions and login attempts, old and new."""
    async with engine.begin() as conn:
        agent_id = (await conn.execute(insert(agents).returning(agents.c.id), [{
            "email": "ana@example.com", "name": "Ana", "password_hash": "x", "role": "agent", "max_chats": 5,
            "presence": "offline", "language": "id", "active": True, "created_at": now}])).scalar_one()
        sub = (await conn.execute(insert(webhook_subscriptions).returning(webhook_subscriptions.c.id), [{
            "url": "http://127.0.0.1:9/hook", "secret": "s", "events": ["message.created"], "active": True,
            "created_at": now}])).scalar_one()
        ids = {}
        for name, status, age in (("delivered_old", "delivered", 40), ("delivered_new", "delivered", 0),
                                  ("failed_50", "failed", 50), ("failed_100", "failed", 100),
                                  ("pending_old", "pending", 40)):
            at = now - age * DAY
            ids[name] = (await conn.execute(insert(webhook_deliveries).returning(webhook_deliveries.c.id), [{
                "subscription_id": sub, "event": "message.created", "payload": {}, "status": status,
                "attempts": 1, "next_attempt_at": at, "locked_until": None, "last_status_code": 200,
                "last_error": None, "log": [], "created_at": at,
                "delivered_at": at if status == "delivered" else None}])).scalar_one()
        await create_session(conn, agent_id, "127.0.0.1", "test", now - 2 * DAY)  # expired 36 h ago
        await create_session(conn, agent_id, "127.0.0.1", "test", now - timedelta(hours=1))  # still valid
        await record_attempt(conn, "ana@example.com", "127.0.0.1", False, now - 2 * DAY)
        await record_attempt(conn, "ana@example.com", "127.0.0.1", False, now - timedelta(minutes=5))
    return ids


async def test_a_pass_deletes_finished_rows_past_their_time_and_keeps_the_record(loket: LoketServer) -> None:
    engine = loket.rt.engine
    await _chat(loket, 3)
    now = loket.rt.clock.now()
    in_msgs, tps = await _count(engine, messages), await _count(engine, touchpoints)
    assert await _count(engine, inbox_items) == 3 and await _count(engine, outbox_items) == 3
    # old queue rows beside them: a pending inbox item 40 days old, failed ones at 50 and 100 days
    pending_old = await _inbox(engine, "p-old", "pending", now - 40 * DAY)
    failed_50 = await _inbox(engine, "f-50", "failed", now - 50 * DAY)
    await _inbox(engine, "f-100", "failed", now - 100 * DAY)
    hooks = await _seed_other_tables(engine, now)

    # now: the 100-day failed rows, the webhook delivered 40 days ago, the expired session, the old login attempt
    deleted = await prune(engine, RetentionPolicy(), now)
    assert deleted == {"inbox_items": 1, "outbox_items": 0, "webhook_deliveries": 2, "console_sessions": 1,
                       "console_login_attempts": 1}
    # a day short of 30 later nothing of the chat is due yet (the other session and attempt are, by then)
    deleted = await prune(engine, RetentionPolicy(), now + 30 * DAY - timedelta(minutes=1))
    assert deleted == {"inbox_items": 0, "outbox_items": 0, "webhook_deliveries": 0, "console_sessions": 1,
                       "console_login_attempts": 1}
    assert await _count(engine, inbox_items) == 5 and await _count(engine, outbox_items) == 3

    # 31 days on: the chat's done inbox items, its sent outbox rows and the newer delivered webhook go;
    # the pending inbox item and the failed ones younger than 90 days stay
    deleted = await prune(engine, RetentionPolicy(), now + 31 * DAY)
    assert (deleted["inbox_items"], deleted["outbox_items"], deleted["webhook_deliveries"]) == (3, 3, 1)
    assert sorted(await _ids(engine, inbox_items)) == sorted([pending_old, failed_50])
    assert await _count(engine, outbox_items) == 0
    assert sorted(await _ids(engine, webhook_deliveries)) == sorted([hooks["failed_50"], hooks["pending_old"]])
    # ... and the customer's record is whole: every message and touchpoint is still there
    assert (await _count(engine, messages), await _count(engine, touchpoints)) == (in_msgs, tps)
    assert await _count(engine, console_sessions) == 0 and await _count(engine, login_attempts) == 0

    # a second pass at the same moment finds nothing more
    again = await prune(engine, RetentionPolicy(), now + 31 * DAY)
    assert set(again.values()) == {0}


async def test_zero_days_keeps_those_rows(loket: LoketServer) -> None:
    engine = loket.rt.engine
    await _chat(loket, 2)
    later = loket.rt.clock.now() + 400 * DAY
    await prune(engine, RetentionPolicy(inbox_days=0, outbox_days=0, webhook_days=0, failed_days=0), later)
    assert (await _count(engine, inbox_items), await _count(engine, outbox_items)) == (2, 2)
    assert {r.name for r in rules(RetentionPolicy(0, 0, 0, 0), later)} == {
        "console_sessions", "console_login_attempts"}
    deleted = await prune(engine, RetentionPolicy(inbox_days=0), later)
    assert (deleted["inbox_items"], deleted["outbox_items"]) == (0, 2)


async def test_the_walk_stops_at_the_first_chunk_newer_than_every_cutoff(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
        old = [await _inbox(engine, f"old-{i}", "done" if i % 3 else "pending", now - 45 * DAY)
               for i in range(10)]
        new = [await _inbox(engine, f"new-{i}", "done", now - DAY) for i in range(10)]
        chunks: list[int] = []
        deleted = await prune(engine, RetentionPolicy(), now, chunk=3,
                              progress=lambda name, n: chunks.append(n) if name == "inbox_items" else None)
        # ids 1-3, 4-6, 7-9, 10-12 (mixed), 13-15 (all newer than the cutoff): five chunks, not seven
        assert len(chunks) == 5
        assert deleted["inbox_items"] == sum(chunks) == 6  # the done ones among the old ten
        kept = await _ids(engine, inbox_items)
        assert kept == sorted([old[i] for i in range(10) if i % 3 == 0] + new)
    finally:
        await engine.dispose()


async def test_the_background_pass_prunes_and_counts_on_metrics(settings_factory: Any) -> None:
    loket = LoketServer(settings_factory(LOKET_HOUSEKEEPING_INTERVAL_SECONDS="0.2"))
    await loket.start()
    try:
        await _chat(loket, 2)
        engine = loket.rt.engine
        assert await _count(engine, inbox_items) == 2
        loket.rt.clock.advance(31 * DAY)
        await wait_for(lambda: _empty(engine), timeout=15, what="the background pass to prune the queues")
        keeper = loket.rt.services["housekeeping"]
        passes = keeper.passes
        await wait_for(lambda: asyncio.sleep(0, keeper.passes > passes), what="the pass to finish")
        text = await scrape(loket)
        assert 'loket_rows_pruned_total{table="inbox_items"} 2.0' in text
        assert 'loket_rows_pruned_total{table="outbox_items"} 2.0' in text
        assert await _count(engine, messages) == 4  # two in, two replies: still on the record
    finally:
        await loket.stop()


async def _empty(engine: AsyncEngine) -> bool:  # (the pass that empties them may still be on other tables)
    return await _count(engine, inbox_items) == 0 and await _count(engine, outbox_items) == 0


async def test_housekeeping_interval_zero_runs_no_background_pass(settings_factory: Any) -> None:
    loket = LoketServer(settings_factory(LOKET_HOUSEKEEPING_INTERVAL_SECONDS="0"))
    await loket.start()
    try:
        assert "housekeeping" not in [t.get_name() for t in loket.rt._tasks]  # noqa: SLF001
        await _chat(loket, 1)
        loket.rt.clock.advance(31 * DAY)
        await asyncio.sleep(0.5)
        assert await _count(loket.rt.engine, inbox_items) == 1
    finally:
        await loket.stop()


def test_loket_db_prune_dry_run_then_for_real(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)

    async def seed() -> None:
        engine = make_engine(db_url)
        try:
            await upgrade(engine)
            for i in range(5):
                await _inbox(engine, f"done-{i}", "done", now - 40 * DAY)
            await _inbox(engine, "recent", "done", now - DAY)
        finally:
            await engine.dispose()

    async def inbox_count() -> int:
        engine = make_engine(db_url)
        try:
            return await _count(engine, inbox_items)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    monkeypatch.chdir(tmp_path)
    env = cli_env(db_url, tmp_path)
    runner = CliRunner()
    dry = runner.invoke(app, ["db", "prune", "--dry-run"], env=env, catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert "Would delete" in dry.output and "inbox_items" in dry.output
    assert asyncio.run(inbox_count()) == 6
    real = runner.invoke(app, ["db", "prune"], env=env, catch_exceptions=False)
    assert real.exit_code == 0, real.output
    assert "Deleted" in real.output
    assert [line for line in real.output.splitlines() if "inbox_items" in line and line.rstrip(" │|").endswith(" 5")
            ], real.output
    assert asyncio.run(inbox_count()) == 1
    bad = runner.invoke(app, ["db", "prune"], env={**env, "LOKET_RETAIN_INBOX_DAYS": "-3"})
    assert bad.exit_code == 2 and "LOKET_RETAIN_INBOX_DAYS=-3 cannot be negative" in bad.output


def test_retention_settings_are_read_and_checked(tmp_path: Path) -> None:
    base = {"LOKET_SECRET_KEY": "k" * 40, "LOKET_DATA_DIR": str(tmp_path)}
    s = Settings.from_env({**base, "LOKET_RETAIN_INBOX_DAYS": "7", "LOKET_RETAIN_FAILED_DAYS": "0",
                           "LOKET_HOUSEKEEPING_INTERVAL_SECONDS": "600"})
    assert (s.retain_inbox_days, s.retain_outbox_days, s.retain_failed_days) == (7, 30, 0)
    assert s.housekeeping_interval_seconds == 600
    with pytest.raises(ConfigError, match="LOKET_RETAIN_OUTBOX_DAYS='a week' is not a whole number"):
        Settings.from_env({**base, "LOKET_RETAIN_OUTBOX_DAYS": "a week"})
    with pytest.raises(ConfigError, match=r"LOKET_HOUSEKEEPING_INTERVAL_SECONDS='-1' must not be negative \(0 switches it off\)"):
        Settings.from_env({**base, "LOKET_HOUSEKEEPING_INTERVAL_SECONDS": "-1"})


async def test_one_process_at_a_time_prunes_a_postgresql_database(pg_url: str, tmp_path: Path) -> None:
    """A second pass (another worker's, or `loket db prune`) leaves the rows to the one holding the pass's lock."""
    engine = make_engine(pg_url)
    other = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        now = datetime.now(UTC)
        for i in range(3):
            await _inbox(engine, f"lock-done-{i}", "done", now - 40 * DAY)
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK)
        assert await prune(engine, RetentionPolicy(), now) is None
        assert await _count(engine, inbox_items) == 3  # nothing deleted behind the other pass
        env = cli_env(pg_url, tmp_path)
        held = await asyncio.to_thread(CliRunner().invoke, app, ["db", "prune"], env=env)
        assert held.exit_code == 1, held.output
        assert "Another Loket process is pruning this database right now" in held.output
        assert await _count(engine, inbox_items) == 3
        await other.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
        deleted = await prune(engine, RetentionPolicy(), now)
        assert deleted is not None and deleted["inbox_items"] == 3
        assert await _count(engine, inbox_items) == 0
        # the pass let its own lock go: the other session can take it now
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK)
    finally:
        await other.close()
        await engine.dispose()
