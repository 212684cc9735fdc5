"""Appointment logic shared by the importer, the REST API, the flow handlers and the scheduler.

Everything here runs on an open ``AsyncConnection`` so callers choose the transaction: the importer uses one
savepoint per CSV row, the API one transaction per request, the flow handlers the routing transaction.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from babel.dates import format_datetime
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.appointments.models import STATUSES, appointments_t, providers_t, reminders_t, services_t
from bot.clock import aware
from storage.models import customers, identities
from storage.repositories import add_touchpoint, find_or_create_customer, merge_customers

DEFAULT_STAGES = ("24h", "2h")
DEFAULT_QUIET_HOURS = "21:00-07:00"
DEFAULT_HOURS: dict[str, list[list[str]]] = {
    d: [["08:00", "12:00"], ["13:00", "16:00"]] for d in ("mon", "tue", "wed", "thu", "fri")
} | {"sat": [["08:00", "12:00"]]}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CHANNEL_ORDER = ("whatsapp", "telegram", "email", "webchat")
PREFERRED_CHANNELS = ("whatsapp", "telegram", "email")
OPEN_STATUSES = ("booked", "confirmed", "rescheduled")

# Indonesian zone names people write instead of IANA ones.
TZ_ALIASES = {"WIB": "Asia/Jakarta", "WITA": "Asia/Makassar", "WIT": "Asia/Jayapura"}
TZ_ABBR = {"Asia/Jakarta": "WIB", "Asia/Pontianak": "WIB", "Asia/Makassar": "WITA", "Asia/Jayapura": "WIT"}
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_STAGE_RE = re.compile(r"^\s*(\d+)\s*([mhd])\s*$", re.IGNORECASE)


def utc(dt: datetime | None) -> datetime:
    """A stored (non-null) timestamp as an aware UTC datetime (SQLite hands them back naive)."""
    value = aware(dt)
    assert value is not None
    return value


class AppointmentError(ValueError):
    """Input that cannot become an appointment; the message names the field and the fix."""


# ------------------------------------------------------------------ policy (environment)
def parse_stage(stage: str) -> timedelta:
    m = _STAGE_RE.match(stage)
    if not m:
        raise AppointmentError(f"reminder stage {stage!r} is not like 24h, 2h, 30m or 1d")
    n, unit = int(m.group(1)), m.group(2).lower()
    return {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]


def parse_stages(raw: str | list[Any] | None) -> tuple[str, ...]:
    if raw is None or raw == "" or raw == []:
        return ()
    items = raw.split(",") if isinstance(raw, str) else [str(x) for x in raw]
    stages = tuple(s.strip().lower() for s in items if s.strip())
    for s in stages:
        parse_stage(s)
    return stages


def parse_quiet_hours(raw: str | None) -> tuple[time, time] | None:
    """``"21:00-07:00"`` → (21:00, 07:00); empty → None (no quiet hours)."""
    if raw is None:
        raw = DEFAULT_QUIET_HOURS
    raw = raw.strip()
    if not raw:
        return None
    try:
        a, b = raw.split("-")
        start = datetime.strptime(a.strip(), "%H:%M").time()
        end = datetime.strptime(b.strip(), "%H:%M").time()
    except ValueError as exc:
        raise AppointmentError(f"LOKET_QUIET_HOURS={raw!r} is not like 21:00-07:00 (or empty to disable)") from exc
    return start, end


@dataclass
class Policy:
    stages: tuple[str, ...] = DEFAULT_STAGES
    quiet: tuple[time, time] | None = (time(21), time(7))
    rate: float = 20.0  # reminders queued per second per worker (0 = unlimited)
    lease: timedelta = timedelta(seconds=60)
    reply_deadline: timedelta = timedelta(hours=1)  # no answer this long before start → staff queue
    team: str = "clinic"
    batch: int = 200
    poll: float = 1.0
    concurrency: int = 4  # consumers per worker process (PostgreSQL)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Policy:
        stages = parse_stages(env.get("LOKET_REMINDER_STAGES")) or DEFAULT_STAGES
        deadline = env.get("LOKET_REMINDER_REPLY_DEADLINE", "1h").strip()
        return cls(
            stages=stages,
            quiet=parse_quiet_hours(env.get("LOKET_QUIET_HOURS")),
            rate=float(env.get("LOKET_REMINDER_RATE", "20") or 0),
            lease=timedelta(seconds=float(env.get("LOKET_REMINDER_LEASE_SECONDS", "60") or 60)),
            reply_deadline=parse_stage(deadline) if deadline else timedelta(0),
            team=env.get("LOKET_APPOINTMENTS_TEAM", "clinic") or "clinic",
            batch=int(env.get("LOKET_REMINDER_BATCH", "200") or 200),
            poll=float(env.get("LOKET_REMINDER_POLL_SECONDS", "1") or 1),
            concurrency=int(env.get("LOKET_REMINDER_CONCURRENCY", "4") or 4),
        )


def resolve_timezone(name: str) -> str:
    name = (name or "").strip()
    name = TZ_ALIASES.get(name.upper(), name)
    if not name:
        raise AppointmentError("timezone is empty; use an IANA name such as Asia/Jakarta (or WIB/WITA/WIT)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise AppointmentError(f"unknown timezone {name!r}; use an IANA name such as Asia/Makassar") from exc
    return name


def quiet_until(local: datetime, quiet: tuple[time, time] | None) -> datetime | None:
    """If ``local`` (aware, the customer's zone) falls in quiet hours, the local end of them; else None."""
    if quiet is None:
        return None
    start, end = quiet
    t = local.timetz().replace(tzinfo=None)
    if start == end:
        return None
    if start < end:
        inside = start <= t < end
        end_day = local.date()
    else:  # wraps midnight, e.g. 21:00-07:00
        inside = t >= start or t < end
        end_day = local.date() + timedelta(days=1) if t >= start else local.date()
    if not inside:
        return None
    tz = local.tzinfo
    return datetime.combine(end_day, end).replace(tzinfo=tz)


# ------------------------------------------------------------------ formatting and texts
def local_start(appt: dict[str, Any]) -> datetime:
    return aware(appt["start_at"]).astimezone(ZoneInfo(appt["timezone"]))  # type: ignore[union-attr]


def format_when(start_utc: datetime, tz: str, language: str) -> str:
    """'Selasa, 24 November 2026 09.30 WITA' — Babel, in the customer's zone and language."""
    local = aware(start_utc).astimezone(ZoneInfo(tz))  # type: ignore[union-attr]
    locale = "id" if language != "en" else "en"
    text = format_datetime(local, "EEEE, d MMMM y HH.mm" if locale == "id" else "EEEE, d MMMM y HH:mm",
                           locale=locale)
    abbr = TZ_ABBR.get(tz) or local.tzname() or tz
    return f"{text} {abbr}"


TEXTS: dict[str, dict[str, str]] = {
    "reminder": {
        "id": "Halo {name}, ini pengingat janji temu {service} Anda dengan {provider} pada {when} di {location}.\n"
        "Balas 1 untuk konfirmasi, 2 untuk ganti jadwal, 3 untuk batal.",
        "en": "Hello {name}, this is a reminder of your {service} appointment with {provider} on {when} at "
        "{location}.\nReply 1 to confirm, 2 to reschedule, 3 to cancel.",
    },
    "confirm": {"id": "Konfirmasi", "en": "Confirm"},
    "reschedule": {"id": "Ganti jadwal", "en": "Reschedule"},
    "cancel": {"id": "Batal", "en": "Cancel"},
    "confirmed": {
        "id": "Terima kasih, janji temu Anda pada {when} sudah dikonfirmasi. Sampai jumpa!",
        "en": "Thank you, your appointment on {when} is confirmed. See you then!",
    },
    "cancelled": {
        "id": "Janji temu Anda pada {when} sudah dibatalkan. Ketik *menu* bila ingin membuat janji baru.",
        "en": "Your appointment on {when} has been cancelled. Type *menu* to book a new one.",
    },
    "slots": {
        "id": "Silakan pilih jadwal baru (balas dengan nomornya), atau ketik 0 untuk bicara dengan petugas:",
        "en": "Please pick a new time (reply with its number), or type 0 to talk to a person:",
    },
    "rescheduled": {
        "id": "Jadwal Anda sudah diganti ke {when}. Kami akan mengingatkan Anda sebelumnya.",
        "en": "Your appointment has been moved to {when}. We will remind you beforehand.",
    },
    "slot_taken": {
        "id": "Maaf, jadwal itu baru saja terisi. Silakan pilih jadwal lain:",
        "en": "Sorry, that time has just been taken. Please pick another one:",
    },
    "not_open": {
        "id": "Janji temu ini sudah {status}; tidak ada yang diubah. Ketik 0 untuk bicara dengan petugas.",
        "en": "This appointment is already {status}; nothing was changed. Type 0 to talk to a person.",
    },
    "ics_subject": {"id": "Janji temu {service}", "en": "{service} appointment"},
}


def tr(key: str, lang: str, **kw: Any) -> str:
    entry = TEXTS[key]
    return entry.get(lang if lang in entry else "id", entry["id"]).format(**kw)


def ics_calendar(appt: dict[str, Any], service: dict[str, Any], provider: dict[str, Any], org: str,
                 now: datetime, domain: str = "loket") -> str:
    """An RFC 5545 VCALENDAR with one VEVENT (UTC times, escaped text, folded lines, CRLF)."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")

    def fold(line: str) -> str:
        out: list[str] = []
        cur = line.encode()
        while len(cur) > 75:
            cut = 75 if not out else 74
            while cut > 0 and (cur[cut] & 0xC0) == 0x80:  # never split a UTF-8 sequence
                cut -= 1
            out.append(cur[:cut].decode())
            cur = cur[cut:]
        out.append(cur.decode())
        return "\r\n ".join(out)

    start = aware(appt["start_at"]).astimezone(UTC)  # type: ignore[union-attr]
    end = start + timedelta(minutes=int(service.get("duration_minutes") or 30))
    fmt = "%Y%m%dT%H%M%SZ"
    status = "CANCELLED" if appt["status"] == "cancelled" else "CONFIRMED"
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        f"PRODID:-//{esc(org)}//Loket appointments//ID",
        "CALSCALE:GREGORIAN",
        "METHOD:PUBLISH",
        "BEGIN:VEVENT",
        f"UID:appointment-{appt['id']}@{domain}",
        f"DTSTAMP:{now.astimezone(UTC).strftime(fmt)}",
        f"DTSTART:{start.strftime(fmt)}",
        f"DTEND:{end.strftime(fmt)}",
        f"SUMMARY:{esc(service['name'] + ' — ' + provider['name'])}",
        f"LOCATION:{esc(appt['location'] or provider.get('location') or '')}",
        f"STATUS:{status}",
        "BEGIN:VALARM",
        "ACTION:DISPLAY",
        "DESCRIPTION:Reminder",
        "TRIGGER:-PT1H",
        "END:VALARM",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return "\r\n".join(fold(line) for line in lines) + "\r\n"


# ------------------------------------------------------------------ validation of one appointment input
@dataclass
class AppointmentInput:
    external_id: str
    name: str | None
    phone: str | None  # E.164
    email: str | None  # lowercased
    telegram_chat_id: str | None
    service: str
    provider: str
    location: str
    start_utc: datetime
    timezone: str
    channel: str | None
    language: str


FIELDS = ("external_id", "name", "phone", "email", "telegram_chat_id", "service", "provider", "location",
          "start", "timezone", "channel", "language")


def validate_input(row: dict[str, Any], now: datetime) -> tuple[AppointmentInput | None, list[str]]:
    """Check one CSV row / API body. Returns the parsed input or the list of readable problems."""
    errors: list[str] = []

    def get(key: str) -> str:
        v = row.get(key)
        return "" if v is None else str(v).strip()

    ext = get("external_id")
    if not ext:
        errors.append("external_id is empty")
    elif len(ext) > 200:
        errors.append("external_id is longer than 200 characters")
    phone = None
    if get("phone"):
        try:
            num = phonenumbers.parse(get("phone"), "ID")
            if not phonenumbers.is_valid_number(num):
                raise phonenumbers.NumberParseException(0, "not a valid number")
            phone = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
        except phonenumbers.NumberParseException:
            errors.append(f"phone {get('phone')!r} is not a valid phone number (e.g. +6281234567890 or 0812…)")
    email = get("email").lower() or None
    if email and not _EMAIL_RE.match(email):
        errors.append(f"email {get('email')!r} is not an email address")
    tg = get("telegram_chat_id") or None
    if tg and not re.fullmatch(r"-?\d{1,20}", tg):
        errors.append(f"telegram_chat_id {tg!r} must be the numeric chat id")
    if not (phone or email or tg) and not any(e.startswith(("phone", "email", "telegram")) for e in errors):
        errors.append("no way to reach the customer: give phone, email or telegram_chat_id")
    for key in ("service", "provider"):
        if not get(key):
            errors.append(f"{key} is empty")
    tz = None
    try:
        tz = resolve_timezone(get("timezone"))
    except AppointmentError as exc:
        errors.append(str(exc))
    start_utc = None
    raw_start = get("start")
    if isinstance(row.get("start_utc"), datetime):
        start_utc = aware(row["start_utc"])
    elif not raw_start:
        errors.append("start is empty; use YYYY-MM-DD HH:MM in the appointment's timezone")
    else:
        try:
            naive = datetime.strptime(raw_start, "%Y-%m-%d %H:%M")
        except ValueError:
            errors.append(f"start {raw_start!r} is not a real date and time (YYYY-MM-DD HH:MM)")
        else:
            if tz:
                zone = ZoneInfo(tz)
                local = naive.replace(tzinfo=zone)
                back = local.astimezone(UTC).astimezone(zone)
                if back.replace(tzinfo=None) != naive:
                    errors.append(f"start {raw_start!r} does not exist in {tz} (daylight-saving gap)")
                else:
                    start_utc = local.astimezone(UTC)
    if start_utc is not None and start_utc <= now:
        errors.append(f"start {raw_start or start_utc.isoformat()} is in the past")
    channel = get("channel").lower() or None
    if channel and channel not in PREFERRED_CHANNELS:
        errors.append(f"channel {channel!r} must be whatsapp, telegram, email or empty")
    elif channel == "whatsapp" and not phone and not get("phone"):
        errors.append("channel is whatsapp but phone is empty")
    elif channel == "telegram" and not tg:
        errors.append("channel is telegram but telegram_chat_id is empty")
    elif channel == "email" and not email:
        errors.append("channel is email but email is empty")
    language = get("language").lower() or "id"
    if language not in {"id", "en"}:
        errors.append(f"language {language!r} must be id or en")
    if errors:
        return None, errors
    assert tz is not None and start_utc is not None
    return AppointmentInput(
        external_id=ext, name=get("name") or None, phone=phone, email=email, telegram_chat_id=tg,
        service=get("service"), provider=get("provider"), location=get("location"), start_utc=start_utc,
        timezone=tz, channel=channel, language=language,
    ), []


# ------------------------------------------------------------------ customers and identities
async def link_customer(conn: AsyncConnection, inp: AppointmentInput, now: datetime) -> int:
    """One customer for all of the person's addresses: existing identities are found (and their customers
    merged when they differ), missing ones are added to that customer."""
    addresses = [(ch, addr) for ch, addr in (("whatsapp", inp.phone), ("telegram", inp.telegram_chat_id),
                                              ("email", inp.email)) if addr]
    found = (
        await conn.execute(
            select(identities.c.channel, identities.c.address, identities.c.customer_id).where(
                identities.c.address.in_([a for _, a in addresses])
            )
        )
    ).all()
    existing = {(r.channel, r.address): r.customer_id for r in found if (r.channel, r.address) in set(addresses)}
    if existing:
        ch, addr = next((c, a) for c, a in addresses if (c, a) in existing)
    else:
        ch, addr = addresses[0]
    _, cust, _ = await find_or_create_customer(conn, channel=ch, address=addr, now=now,
                                               display_name=inp.name, language=inp.language)
    customer_id = int(cust["id"])
    for other in sorted({cid for cid in existing.values() if cid != customer_id}):
        await merge_customers(conn, source_id=other, target_id=customer_id, now=now, actor="appointments",
                              reason="same person in an appointment record")
    for c, a in addresses:
        if (c, a) in existing or (c, a) == (ch, addr):
            continue
        await conn.execute(identities.insert().values(
            customer_id=customer_id, channel=c, address=a, display_name=inp.name,
            verified=False, unreachable=False, meta={}, created_at=now,
        ))
    values: dict[str, Any] = {"timezone": inp.timezone}
    if inp.name and not cust["display_name"]:
        values["display_name"] = inp.name
    await conn.execute(update(customers).where(customers.c.id == customer_id).values(**values))
    return customer_id


async def get_or_create_service(conn: AsyncConnection, name: str, now: datetime) -> dict[str, Any]:
    row = (await conn.execute(select(services_t).where(services_t.c.name == name))).mappings().first()
    if row is None:
        await conn.execute(services_t.insert().values(name=name, duration_minutes=30, reminder_stages=None,
                                                      created_at=now))
        row = (await conn.execute(select(services_t).where(services_t.c.name == name))).mappings().one()
    return dict(row)


async def get_or_create_provider(conn: AsyncConnection, name: str, location: str, tz: str,
                                 now: datetime) -> dict[str, Any]:
    row = (await conn.execute(select(providers_t).where(providers_t.c.name == name))).mappings().first()
    if row is None:
        await conn.execute(providers_t.insert().values(name=name, location=location, timezone=tz,
                                                       working_hours=DEFAULT_HOURS, created_at=now))
        row = (await conn.execute(select(providers_t).where(providers_t.c.name == name))).mappings().one()
    return dict(row)


# ------------------------------------------------------------------ appointments and their reminders
async def upsert_appointment(conn: AsyncConnection, inp: AppointmentInput, now: datetime, policy: Policy,
                             source: str = "import") -> tuple[int, str]:
    """Create or update by external_id. Returns (id, "created" | "updated" | "unchanged" | "rescheduled")."""
    customer_id = await link_customer(conn, inp, now)
    service = await get_or_create_service(conn, inp.service, now)
    provider = await get_or_create_provider(conn, inp.provider, inp.location, inp.timezone, now)
    location = inp.location or provider["location"] or ""
    values = dict(customer_id=customer_id, service_id=service["id"], provider_id=provider["id"], location=location,
                  timezone=inp.timezone, channel=inp.channel, language=inp.language)
    row = (
        await conn.execute(select(appointments_t).where(appointments_t.c.external_id == inp.external_id))
    ).mappings().first()
    if row is None:
        appt_id = (
            await conn.execute(appointments_t.insert().values(
                external_id=inp.external_id, start_at=inp.start_utc, status="booked", source=source, meta={},
                created_at=now, updated_at=now, **values,
            ).returning(appointments_t.c.id))
        ).scalar_one()
        await add_touchpoint(conn, customer_id=customer_id, kind="appointment_booked", now=now, actor=source,
                             payload={"appointment_id": appt_id, "external_id": inp.external_id,
                                      "start": inp.start_utc.isoformat(), "service": inp.service})
        await plan_reminders(conn, appt_id, inp.start_utc, service, now, policy)
        return int(appt_id), "created"
    appt_id = int(row["id"])
    moved = aware(row["start_at"]) != inp.start_utc
    changed = moved or any(row[k] != v for k, v in values.items())
    if not changed:
        return appt_id, "unchanged"
    if moved:
        values.update(start_at=inp.start_utc, escalated_at=None)
        if row["status"] in ("booked", "confirmed"):
            values["status"] = "rescheduled"
        elif row["status"] in ("cancelled", "no_show", "done"):
            values["status"] = "booked"
    await conn.execute(update(appointments_t).where(appointments_t.c.id == appt_id).values(updated_at=now, **values))
    if moved:
        await add_touchpoint(conn, customer_id=customer_id, kind="appointment_rescheduled", now=now, actor=source,
                             payload={"appointment_id": appt_id, "from": utc(row["start_at"]).isoformat(),
                                      "to": inp.start_utc.isoformat()})
        await plan_reminders(conn, appt_id, inp.start_utc, service, now, policy)
        return appt_id, "rescheduled"
    return appt_id, "updated"


def stages_for(service: dict[str, Any], policy: Policy) -> tuple[str, ...]:
    return parse_stages(service.get("reminder_stages")) or policy.stages


async def plan_reminders(conn: AsyncConnection, appt_id: int, start: datetime, service: dict[str, Any],
                         now: datetime, policy: Policy) -> None:
    """One reminder row per stage. A stage already past is ``skipped`` (never sent late); a moved appointment
    resets its rows to the new due time (the earlier send stays in ``fallback`` as history)."""
    stages = stages_for(service, policy)
    rows = {
        r["stage"]: dict(r)
        for r in (await conn.execute(select(reminders_t).where(reminders_t.c.appointment_id == appt_id))).mappings()
    }
    for stage in stages:
        due = start - parse_stage(stage)
        status, reason = ("pending", None) if due > now else ("skipped", "stage already past when booked")
        if stage not in rows:
            await conn.execute(reminders_t.insert().values(
                appointment_id=appt_id, stage=stage, due_at=due, status=status, reason=reason, attempts=0,
                fallback=[], created_at=now, updated_at=now,
            ))
            continue
        old = rows[stage]
        history = list(old["fallback"] or [])
        if old["message_id"]:
            history.append({"superseded_message_id": old["message_id"], "channel": old["channel"],
                            "due_at": utc(old["due_at"]).isoformat(), "at": now.isoformat()})
        await conn.execute(update(reminders_t).where(reminders_t.c.id == old["id"]).values(
            due_at=due, status=status, reason=reason, message_id=None, conversation_id=None, channel=None,
            outcome=None, locked_by=None, locked_until=None, sent_at=None, fallback=history, updated_at=now,
        ))
    for stage, old in rows.items():
        if stage not in stages and old["status"] in ("pending", "deferred"):
            await conn.execute(update(reminders_t).where(reminders_t.c.id == old["id"]).values(
                status="skipped", reason="stage no longer in the service's policy", updated_at=now))


async def set_status(conn: AsyncConnection, appt_id: int, status: str, now: datetime, actor: str,
                     conversation_id: int | None = None, channel: str | None = None) -> dict[str, Any]:
    """Change an appointment's status with a touchpoint; closing it skips the reminders still waiting."""
    if status not in STATUSES:
        raise AppointmentError(f"status {status!r} must be one of {', '.join(STATUSES)}")
    row = (await conn.execute(select(appointments_t).where(appointments_t.c.id == appt_id))).mappings().first()
    if row is None:
        raise AppointmentError(f"no appointment with id {appt_id}")
    if row["status"] != status:
        await conn.execute(update(appointments_t).where(appointments_t.c.id == appt_id)
                           .values(status=status, updated_at=now))
        kind = {"confirmed": "appointment_confirmed", "cancelled": "appointment_cancelled",
                "no_show": "appointment_no_show", "done": "appointment_done"}.get(status, "appointment_status")
        await add_touchpoint(conn, customer_id=row["customer_id"], conversation_id=conversation_id, kind=kind,
                             now=now, channel=channel, actor=actor,
                             payload={"appointment_id": appt_id, "from": row["status"], "to": status})
    if status in ("cancelled", "no_show", "done"):
        await conn.execute(update(reminders_t).where(
            reminders_t.c.appointment_id == appt_id, reminders_t.c.status.in_(("pending", "deferred"))
        ).values(status="skipped", reason=f"appointment {status}", updated_at=now))
    return {**dict(row), "status": status}


async def move_appointment(conn: AsyncConnection, appt_id: int, start: datetime, now: datetime, policy: Policy,
                           actor: str, conversation_id: int | None = None) -> dict[str, Any]:
    row = dict((await conn.execute(select(appointments_t).where(appointments_t.c.id == appt_id))).mappings().one())
    service = dict((await conn.execute(select(services_t).where(services_t.c.id == row["service_id"]))).mappings()
                   .one())
    await conn.execute(update(appointments_t).where(appointments_t.c.id == appt_id).values(
        start_at=start, status="rescheduled", escalated_at=None, updated_at=now))
    await add_touchpoint(conn, customer_id=row["customer_id"], conversation_id=conversation_id,
                         kind="appointment_rescheduled", now=now, actor=actor,
                         payload={"appointment_id": appt_id, "from": utc(row["start_at"]).isoformat(),
                                  "to": start.isoformat()})
    await plan_reminders(conn, appt_id, start, service, now, policy)
    return {**row, "start_at": start, "status": "rescheduled"}


# ------------------------------------------------------------------ free slots from the provider's hours
async def free_slots(conn: AsyncConnection, provider_id: int, duration_minutes: int, now: datetime,
                     count: int = 5, days: int = 14, exclude_appointment: int | None = None,
                     lead: timedelta = timedelta(hours=2)) -> list[datetime]:
    """The next ``count`` free starts (UTC) inside the provider's weekly hours, clear of its appointments."""
    prov = (await conn.execute(select(providers_t).where(providers_t.c.id == provider_id))).mappings().one()
    zone = ZoneInfo(prov["timezone"])
    hours = prov["working_hours"] or {}
    dur = timedelta(minutes=duration_minutes or 30)
    horizon = now + timedelta(days=days + 1)
    busy_q = select(appointments_t.c.id, appointments_t.c.start_at, appointments_t.c.service_id).where(
        appointments_t.c.provider_id == provider_id,
        appointments_t.c.status.in_(OPEN_STATUSES),
        appointments_t.c.start_at >= now - timedelta(hours=12),
        appointments_t.c.start_at <= horizon,
    )
    durations = {r.id: r.duration_minutes for r in (await conn.execute(select(services_t.c.id,
                                                                              services_t.c.duration_minutes)))}
    busy = [(utc(r.start_at), utc(r.start_at) + timedelta(minutes=durations.get(r.service_id, 30)))
            for r in (await conn.execute(busy_q)) if r.id != exclude_appointment]
    earliest = now + lead
    out: list[datetime] = []
    day0: date = now.astimezone(zone).date()
    for offset in range(days + 1):
        day = day0 + timedelta(days=offset)
        for span in hours.get(DAYS[day.weekday()], []):
            try:
                a = datetime.combine(day, datetime.strptime(span[0], "%H:%M").time(), tzinfo=zone)
                b = datetime.combine(day, datetime.strptime(span[1], "%H:%M").time(), tzinfo=zone)
            except (ValueError, IndexError, TypeError):
                continue
            t = a
            while t + dur <= b:
                s = t.astimezone(UTC)
                if s >= earliest and not any(s < e and s + dur > bs for bs, e in busy):  # type: ignore[operator]
                    out.append(s)
                    if len(out) >= count:
                        return out
                t += dur
    return out


def validate_hours(hours: Any) -> dict[str, list[list[str]]]:
    if not isinstance(hours, dict):
        raise AppointmentError('working hours must be a JSON object like {"mon": [["08:00", "16:00"]]}')
    clean: dict[str, list[list[str]]] = {}
    for day, spans in hours.items():
        if day not in DAYS:
            raise AppointmentError(f"unknown day {day!r}; use {', '.join(DAYS)}")
        if not isinstance(spans, list):
            raise AppointmentError(f"{day}: give a list of [start, end] pairs")
        clean[day] = []
        for span in spans:
            try:
                a = datetime.strptime(span[0], "%H:%M")
                b = datetime.strptime(span[1], "%H:%M")
            except (ValueError, IndexError, TypeError) as exc:
                raise AppointmentError(f"{day}: {span!r} is not a pair of HH:MM times") from exc
            if b <= a:
                raise AppointmentError(f"{day}: {span[0]}–{span[1]} ends before it starts")
            clean[day].append([span[0], span[1]])
    return clean


def new_external_id(prefix: str = "appt") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def appointment_json(row: dict[str, Any], service: dict[str, Any] | None = None,
                     provider: dict[str, Any] | None = None) -> dict[str, Any]:
    start = aware(row["start_at"])
    assert start is not None
    out = {
        "id": row["id"], "external_id": row["external_id"], "customer_id": row["customer_id"],
        "service_id": row["service_id"], "provider_id": row["provider_id"], "location": row["location"],
        "start": start.isoformat(), "start_local": start.astimezone(ZoneInfo(row["timezone"])).isoformat(),
        "timezone": row["timezone"], "status": row["status"], "channel": row["channel"],
        "language": row["language"], "source": row["source"],
        "created_at": aware(row["created_at"]).isoformat(),  # type: ignore[union-attr]
        "updated_at": aware(row["updated_at"]).isoformat(),  # type: ignore[union-attr]
    }
    if service is not None:
        out["service"] = service["name"]
    if provider is not None:
        out["provider"] = provider["name"]
    return out
