"""The reminder scheduler with an injected clock: one message per stage, quiet hours, timezones, opt-out."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from bot.api.auth import create_token
from bot.appointments.models import reminders_t
from bot.clock import aware
from storage.models import customers, messages, outbox_items
from tests.appointments.helpers import (
    add_webchat,
    advance,
    appointment,
    count_reminder_messages,
    import_rows,
    reminder_messages,
    reminders,
    row,
    start,
    wait_reminder,
)
from tests.conftest import BACKEND
from tests.support import wait_for


async def test_exactly_one_message_per_stage(settings_factory: Any, tmp_path: Path) -> None:
    loket, clock = await start(settings_factory)
    try:
        await import_rows(loket, tmp_path, [row("E1", phone="081234567890"), row("E2", phone="081234567891")])
        for ext in ("E1", "E2"):
            await add_webchat(loket, (await appointment(loket, ext))["customer_id"])
        sched = loket.rt.services["reminders"]
        await sched.tick()
        assert await count_reminder_messages(loket) == 0  # nothing due yet
        await advance(loket, clock, timedelta(hours=24))  # 24h stage of 25 Nov 10:00 WIB is due
        await wait_reminder(loket, "E1", "24h", "sent")
        await wait_reminder(loket, "E2", "24h", "sent")
        for _ in range(5):  # more rounds change nothing
            await sched.tick()
        assert await count_reminder_messages(loket) == 2
        await advance(loket, clock, timedelta(hours=22))
        await wait_reminder(loket, "E1", "2h", "sent")
        await wait_reminder(loket, "E2", "2h", "sent")
        for _ in range(5):
            await sched.tick()
        msgs = await reminder_messages(loket)
        assert len(msgs) == 4
        stages = sorted((m["meta"]["reply"]["meta"]["appointment_id"], m["meta"]["reply"]["meta"]["stage"])
                        for m in msgs)
        assert len(set(stages)) == 4
        assert all(m["channel"] == "webchat" for m in msgs)
        text = msgs[0]["body"]
        assert "Rabu, 25 November 2026 10.00 WIB" in text and "Klinik Sehat" in text
        assert [c["value"] for c in msgs[0]["choices"]] == ["confirm", "reschedule", "cancel"]
        # the dispatcher sent each outbox row once
        await wait_for(lambda: _all_sent(loket), what="outbox drained")
    finally:
        await loket.stop()


async def _all_sent(loket: Any) -> bool:
    rows = await loket.fetch(select(outbox_items.c.status))
    return bool(rows) and all(r["status"] == "sent" for r in rows)


async def test_quiet_hours_defer_to_their_end(settings_factory: Any, tmp_path: Path) -> None:
    loket, clock = await start(settings_factory)
    try:
        # 08:00 WIB appointment: the 2h stage falls at 06:00 WIB, inside 21:00-07:00
        await import_rows(loket, tmp_path, [row("Q1", phone="081234567890", start="2026-11-25 08:00",
                                                channel="")])
        await add_webchat(loket, (await appointment(loket, "Q1"))["customer_id"])
        await advance(loket, clock, datetime(2026, 11, 24, 1, 0, tzinfo=UTC) - clock.now())  # 08:00 WIB
        await wait_reminder(loket, "Q1", "24h", "sent")
        await advance(loket, clock, datetime(2026, 11, 24, 23, 0, tzinfo=UTC) - clock.now())  # 06:00 WIB
        rem = await wait_reminder(loket, "Q1", "2h", "deferred")
        assert aware(rem["due_at"]) == datetime(2026, 11, 25, 0, 0, tzinfo=UTC)  # 07:00 WIB
        assert "quiet hours" in rem["reason"]
        sent_stages = [m["meta"]["reply"]["meta"]["stage"] for m in await reminder_messages(loket)]
        assert sent_stages == ["24h"]  # the 24h stage went out at 08:00 WIB the day before
        await advance(loket, clock, timedelta(minutes=59))
        await loket.rt.services["reminders"].tick()
        assert (await reminders(loket, "Q1"))["2h"]["status"] == "deferred"
        await advance(loket, clock, timedelta(minutes=1))
        await wait_reminder(loket, "Q1", "2h", "sent")
        assert await count_reminder_messages(loket) == 2
    finally:
        await loket.stop()


async def test_quiet_hours_follow_each_customers_timezone(settings_factory: Any, tmp_path: Path) -> None:
    loket, clock = await start(settings_factory, LOKET_REMINDER_STAGES="2h")
    try:
        # the same instant (00:30 UTC) in three zones; the 2h stages are all due at 22:30 UTC, which is
        # 05:30 WIB and 06:30 WITA (quiet) but 07:30 WIT (not quiet).
        rows = [row("WIB", phone="081234567890", start="2026-11-24 07:30", timezone="Asia/Jakarta"),
                row("WITA", phone="081234567891", start="2026-11-24 08:30", timezone="WITA"),
                row("WIT", phone="081234567892", start="2026-11-24 09:30", timezone="WIT")]
        await import_rows(loket, tmp_path, rows)
        for ext in ("WIB", "WITA", "WIT"):
            await add_webchat(loket, (await appointment(loket, ext))["customer_id"])
        await advance(loket, clock, datetime(2026, 11, 23, 22, 30, tzinfo=UTC) - clock.now())
        await wait_reminder(loket, "WIT", "2h", "sent")
        wib = await wait_reminder(loket, "WIB", "2h", "deferred")
        wita = await wait_reminder(loket, "WITA", "2h", "deferred")
        assert aware(wib["due_at"]) == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # 07:00 WIB
        assert aware(wita["due_at"]) == datetime(2026, 11, 23, 23, 0, tzinfo=UTC)  # 07:00 WITA
        msgs = await reminder_messages(loket)
        assert len(msgs) == 1 and "Selasa, 24 November 2026 09.30 WIT" in msgs[0]["body"]
        await advance(loket, clock, timedelta(minutes=30))
        await wait_reminder(loket, "WITA", "2h", "sent")
        assert "08.30 WITA" in (await reminder_messages(loket))[-1]["body"]
        await advance(loket, clock, timedelta(hours=1))
        await wait_reminder(loket, "WIB", "2h", "sent")
        assert "07.30 WIB" in (await reminder_messages(loket))[-1]["body"]
    finally:
        await loket.stop()


async def test_opted_out_customer_is_skipped(settings_factory: Any, tmp_path: Path) -> None:
    loket, clock = await start(settings_factory)
    try:
        await import_rows(loket, tmp_path, [row("O1", phone="081234567890")])
        appt = await appointment(loket, "O1")
        await add_webchat(loket, appt["customer_id"])
        async with loket.rt.engine.begin() as conn:
            await conn.execute(update(customers).where(customers.c.id == appt["customer_id"]).values(opted_out=True))
        await advance(loket, clock, timedelta(hours=24))
        rem = await wait_reminder(loket, "O1", "24h", "skipped")
        assert "opted out" in rem["reason"]
        assert await count_reminder_messages(loket) == 0
    finally:
        await loket.stop()


async def test_no_reachable_channel_fails_visibly(settings_factory: Any, tmp_path: Path) -> None:
    loket, clock = await start(settings_factory)
    try:  # only a WhatsApp number, and this server has no WhatsApp channel configured
        await import_rows(loket, tmp_path, [row("N1", phone="081234567890")])
        await advance(loket, clock, timedelta(hours=24))
        rem = await wait_reminder(loket, "N1", "24h", "failed")
        assert "no reachable channel" in rem["reason"]
        assert await loket.scalar(select(messages.c.id).limit(1)) is None
    finally:
        await loket.stop()


async def test_cancelled_appointment_gets_no_reminder(settings_factory: Any, tmp_path: Path) -> None:
    loket, clock = await start(settings_factory)
    try:
        await import_rows(loket, tmp_path, [row("X1", phone="081234567890")])
        appt = await appointment(loket, "X1")
        await add_webchat(loket, appt["customer_id"])
        async with loket.rt.engine.begin() as conn:
            _, reader = await create_token(conn, "reader", ["appointments:read"], clock.now())
            _, writer = await create_token(conn, "clinic system", ["appointments:write"], clock.now())
        async with aiohttp.ClientSession() as s:
            url = f"{loket.base_url}/api/v1/appointments/{appt['id']}"
            async with s.patch(url, json={"status": "cancelled"}) as r:
                assert r.status == 401
            async with s.patch(url, json={"status": "cancelled"}, headers={"Authorization": f"Bearer {reader}"}) as r:
                assert r.status == 403
            async with s.get(url, headers={"Authorization": f"Bearer {reader}"}) as r:
                assert r.status == 200 and (await r.json())["status"] == "booked"
            async with s.patch(url, json={"status": "cancelled"}, headers={"Authorization": f"Bearer {writer}"}) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
        assert body["status"] == "cancelled"
        assert {x["status"] for x in body["reminders"]} == {"skipped"}
        await advance(loket, clock, timedelta(hours=30))
        await loket.rt.services["reminders"].tick()
        assert await count_reminder_messages(loket) == 0
    finally:
        await loket.stop()


async def test_api_create_list_and_validation(settings_factory: Any, tmp_path: Path) -> None:
    loket, clock = await start(settings_factory)
    try:
        async with loket.rt.engine.begin() as conn:
            _, token = await create_token(conn, "his", ["appointments:read", "appointments:write"], clock.now())
        auth = {"Authorization": f"Bearer {token}"}
        body = {"external_id": "API-1", "name": "Ani", "phone": "081234567890", "service": "Vaksin",
                "provider": "dr. Sari", "start": "2026-11-26T09:00:00+08:00", "timezone": "WITA"}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{loket.base_url}/api/v1/appointments", json=body, headers=auth) as r:
                assert r.status == 201, await r.text()
                created = await r.json()
            assert created["start"] == "2026-11-26T01:00:00+00:00" and created["timezone"] == "Asia/Makassar"
            assert [x["stage"] for x in created["reminders"]] == ["24h", "2h"]
            async with s.post(f"{loket.base_url}/api/v1/appointments", json=body, headers=auth) as r:
                assert r.status == 200 and (await r.json())["result"] == "unchanged"
            bad = {**body, "external_id": "API-2", "phone": "12", "timezone": "Mars/Olympus", "start": "2026-11-26 09:00"}
            async with s.post(f"{loket.base_url}/api/v1/appointments", json=bad, headers=auth) as r:
                assert r.status == 422
                errors = (await r.json())["error"]["errors"]
            assert any("phone" in e for e in errors) and any("unknown timezone" in e for e in errors)
            async with s.get(f"{loket.base_url}/api/v1/appointments?status=booked", headers=auth) as r:
                items = (await r.json())["items"]
            assert [i["external_id"] for i in items] == ["API-1"] and items[0]["service"] == "Vaksin"
    finally:
        await loket.stop()


async def test_a_claimed_reminder_held_by_another_transaction_is_still_sent(settings_factory: Any, db_url: str,
                                                                          tmp_path: Path) -> None:
    """Another transaction can hold a claimed reminder's row for a moment: on PostgreSQL a second worker's claim
    (``FOR UPDATE SKIP LOCKED``) keeps a lock on a row it re-checked and did not take; on SQLite any writer holds the
    file. The worker that claimed the row waits for it and sends, instead of leaving it ``sending`` until its lease
    runs out (with this test's frozen clock: for ever)."""
    loket, clock = await start(settings_factory, LOKET_REMINDER_POLL_SECONDS="3600")  # the test drives the ticks
    try:
        await import_rows(loket, tmp_path, [row("H1", phone="081234567890")])
        await add_webchat(loket, (await appointment(loket, "H1"))["customer_id"])
        sched = loket.rt.services["reminders"]
        clock.advance(timedelta(hours=24))  # the 24h stage is due; no nudge, so the loop stays asleep
        ids = await sched.claim(10)
        assert len(ids) == 1
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold_postgresql() -> None:
            async with loket.rt.engine.connect() as other, other.begin():
                await other.execute(select(reminders_t.c.id).where(reminders_t.c.id == ids[0]).with_for_update())
                held.set()
                await release.wait()

        def hold_sqlite() -> None:  # in a thread: the SQLite driver waits for the lock on the event loop's thread
            con = sqlite3.connect(make_url(db_url).database or "", isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                loop.call_soon_threadsafe(held.set)
                time.sleep(0.5)
                con.execute("ROLLBACK")
            finally:
                con.close()

        loop = asyncio.get_running_loop()
        holder = (asyncio.create_task(hold_postgresql()) if BACKEND == "postgresql"
                  else asyncio.ensure_future(asyncio.to_thread(hold_sqlite)))
        await asyncio.wait_for(held.wait(), 10)
        sending = asyncio.create_task(sched.process(ids))
        await asyncio.sleep(0.5)
        release.set()
        assert await asyncio.wait_for(sending, 10) == 1
        await holder
        rem = (await reminders(loket, "H1"))["24h"]
        assert rem["status"] == "sent" and rem["locked_by"] is None
        assert await count_reminder_messages(loket) == 1
    finally:
        await loket.stop()
