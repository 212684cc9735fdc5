"""Numbers for the console dashboard and ``loket appointments report``: confirmations, cancellations,
no-shows and patients per month, plus how the reminders went. Each function returns plain dicts."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.appointments.models import STATUSES, appointments_t, reminders_t
from bot.clock import aware


async def status_summary(conn: AsyncConnection, start: datetime, end: datetime) -> dict[str, Any]:
    """Appointments starting in [start, end): counts per status and the confirmation / no-show rates."""
    rows = (await conn.execute(
        select(appointments_t.c.status, func.count()).where(
            appointments_t.c.start_at >= start, appointments_t.c.start_at < end
        ).group_by(appointments_t.c.status)
    )).all()
    counts = {s: 0 for s in STATUSES}
    counts.update({r[0]: int(r[1]) for r in rows})
    total = sum(counts.values())
    attended = counts["done"] + counts["no_show"]
    return {
        "from": start.isoformat(), "to": end.isoformat(), "total": total, **counts,
        "confirmations": counts["confirmed"], "cancellations": counts["cancelled"], "no_shows": counts["no_show"],
        "confirmation_rate": round(counts["confirmed"] / total, 4) if total else 0.0,
        "no_show_rate": round(counts["no_show"] / attended, 4) if attended else 0.0,
    }


async def reminder_summary(conn: AsyncConnection, start: datetime, end: datetime) -> dict[str, Any]:
    """Reminders due in [start, end): counts per status and per channel, answers and fallbacks."""
    rows = (await conn.execute(
        select(reminders_t.c.status, reminders_t.c.channel, reminders_t.c.outcome, reminders_t.c.fallback)
        .where(reminders_t.c.due_at >= start, reminders_t.c.due_at < end)
    )).all()
    by_status: dict[str, int] = defaultdict(int)
    by_channel: dict[str, int] = defaultdict(int)
    answered = fallbacks = 0
    for r in rows:
        by_status[r.status] += 1
        if r.status == "sent":
            by_channel[r.channel or "?"] += 1
            answered += r.outcome is not None
            fallbacks += any(f.get("error") for f in (r.fallback or []))
    sent = by_status.get("sent", 0)
    return {"total": len(rows), "by_status": dict(by_status), "by_channel": dict(by_channel), "answered": answered,
            "answer_rate": round(answered / sent, 4) if sent else 0.0, "fallbacks": fallbacks}


async def monthly(conn: AsyncConnection, now: datetime, months: int = 12,
                  timezone: str = "Asia/Jakarta") -> list[dict[str, Any]]:
    """Per calendar month (in ``timezone``), oldest first: appointments, distinct patients, and outcomes."""
    zone = ZoneInfo(timezone)
    local_now = now.astimezone(zone)
    y, m = local_now.year, local_now.month
    keys = []
    for _ in range(months):
        keys.append(f"{y:04d}-{m:02d}")
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    keys.reverse()
    first = datetime(int(keys[0][:4]), int(keys[0][5:]), 1, tzinfo=zone)
    end = (datetime(local_now.year, local_now.month, 1, tzinfo=zone) + timedelta(days=32)).replace(day=1)
    data: dict[str, dict[str, Any]] = {k: {"month": k, "appointments": 0, "patients": set(), "confirmed": 0, "cancelled": 0, "no_show": 0,
                "done": 0} for k in keys}
    rows = (await conn.execute(
        select(appointments_t.c.start_at, appointments_t.c.status, appointments_t.c.customer_id)
        .where(appointments_t.c.start_at >= first, appointments_t.c.start_at < end)
    )).all()
    for r in rows:
        key = aware(r.start_at).astimezone(zone).strftime("%Y-%m")  # type: ignore[union-attr]
        d = data.get(key)
        if d is None:
            continue
        d["appointments"] += 1
        if r.status != "cancelled":
            d["patients"].add(r.customer_id)
        if r.status in ("confirmed", "cancelled", "no_show", "done"):
            d[r.status] += 1
    return [{**d, "patients": len(d["patients"])} for d in data.values()]
