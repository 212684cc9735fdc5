"""Shared helpers for the appointment tests: CSV rows, a Loket with an injected clock, web chat identities."""

from __future__ import annotations

import csv
import io
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bot.appointments.importer import ImportReport, import_csv
from bot.appointments.models import appointments_t, reminders_t
from bot.channels.webchat import visitor_address
from bot.clock import Clock, FrozenClock
from storage.models import identities, messages, outbox_items
from tests.support import LoketServer, wait_for

# Monday 23 November 2026, 10:00 WIB.
T0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
FIELDS = ["external_id", "name", "phone", "email", "telegram_chat_id", "service", "provider", "location", "start",
          "timezone", "channel", "language"]
COMPONENTS = ["bot.channels.webchat", "bot.health", "bot.appointments"]
FAST = {"LOKET_REMINDER_POLL_SECONDS": "0.05", "LOKET_REMINDER_RATE": "0"}


def row(ext: str, **kw: str) -> dict[str, str]:
    base = {"external_id": ext, "name": "Budi Santoso", "phone": "", "email": "", "telegram_chat_id": "",
            "service": "Konsultasi Umum", "provider": "dr. Sari", "location": "Klinik Sehat, Jl. Merdeka 1",
            "start": "2026-11-25 10:00", "timezone": "Asia/Jakarta", "channel": "", "language": "id"}
    base.update(kw)
    return base


def csv_text(rows: list[dict[str, str]], fields: list[str] | None = None) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields or FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


async def import_rows(loket: LoketServer, tmp_path: Path, rows: list[dict[str, str]],
                      name: str = "appointments.csv") -> ImportReport:
    path = tmp_path / name
    path.write_text(csv_text(rows), encoding="utf-8")
    report = await import_csv(loket.rt.engine, path, loket.rt.clock.now(), loket.rt.services["appointments_policy"])
    loket.rt.services["reminders"].nudge()
    return report


async def start(settings_factory: Any, clock: Clock | None = None, components: list[str] | None = None,
                **env: str) -> tuple[LoketServer, Clock]:
    clock = clock or FrozenClock(T0)
    server = LoketServer(settings_factory(**{**FAST, **env}), clock=clock, components=components or COMPONENTS)
    await server.start()
    return server, clock


async def add_webchat(loket: LoketServer, customer_id: int) -> str:
    """Give the customer a web chat identity (as the pre-chat form would) and return the visitor token."""
    token = secrets.token_urlsafe(16)
    async with loket.rt.engine.begin() as conn:
        await conn.execute(identities.insert().values(
            customer_id=customer_id, channel="webchat", address=visitor_address(token), verified=True,
            unreachable=False, meta={}, created_at=loket.rt.clock.now()))
    return token


async def appointment(loket: LoketServer, ext: str) -> dict[str, Any]:
    rows = await loket.fetch(select(appointments_t).where(appointments_t.c.external_id == ext))
    assert rows, f"no appointment {ext}"
    return rows[0]


async def reminders(loket: LoketServer, ext: str) -> dict[str, dict[str, Any]]:
    appt = await appointment(loket, ext)
    rows = await loket.fetch(select(reminders_t).where(reminders_t.c.appointment_id == appt["id"]))
    return {r["stage"]: r for r in rows}


async def reminder_messages(loket: LoketServer) -> list[dict[str, Any]]:
    return await loket.fetch(select(messages).where(messages.c.purpose == "appointment_reminder")
                             .order_by(messages.c.id))


async def count_reminder_messages(loket: LoketServer) -> int:
    return int(await loket.scalar(select(func.count()).select_from(messages)
                                  .where(messages.c.purpose == "appointment_reminder")))


async def outbox_drained(loket: LoketServer) -> None:
    async def check() -> bool:
        rows = await loket.fetch(select(outbox_items.c.status))
        return bool(rows) and all(r["status"] in ("sent", "failed") for r in rows)

    await wait_for(check, what="outbox drained")


async def advance(loket: LoketServer, clock: Clock, delta: timedelta) -> None:
    clock.advance(delta)
    loket.rt.services["reminders"].nudge()


async def wait_reminder(loket: LoketServer, ext: str, stage: str, status: str, timeout: float = 10) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = (await reminders(loket, ext)).get(stage)
        return r if r and r["status"] == status else None

    return await wait_for(check, timeout=timeout, what=f"{ext} {stage} → {status}")
