"""Replies to reminders, handled by the router in the same conversation (slot ORDER_APPOINTMENTS).

The step is pure: it reads ``conversation.meta["appointment"]`` (written by the scheduler with the reminder)
and the customer's answer — "1"/"ya"/"konfirmasi"/"confirm", "2"/"ganti jadwal"/"reschedule",
"3"/"batal"/"cancel" or the buttons' values — and returns a ``Custom("appointment.reply")`` effect. The
applier does the database work inside the routing transaction: status, touchpoint, reminder outcome,
the confirmation message, or for a reschedule the free slots (numbered choices) or a handover to staff.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from sqlalchemy import select, update

from bot.appointments.models import appointments_t, reminders_t, services_t
from bot.appointments.service import (
    OPEN_STATUSES,
    TZ_ABBR,
    Policy,
    format_when,
    free_slots,
    move_appointment,
    set_status,
    tr,
)
from bot.clock import aware
from bot.effects import Custom, Decision
from bot.messages import Choice, Reply
from bot.router import RouteContext
from bot.steps import handover, normalize_command
from storage.models import conversations, customers
from storage.repositories import add_touchpoint

if TYPE_CHECKING:
    from bot.pipeline import ApplyContext
    from bot.runtime import Runtime

WORDS = {
    "confirm": {"1", "ya", "y", "iya", "yes", "ok", "oke", "konfirmasi", "confirm", "hadir", "setuju"},
    "reschedule": {"2", "ganti jadwal", "ganti", "reschedule", "jadwal ulang", "ubah jadwal", "ganti waktu"},
    "cancel": {"3", "batal", "batalkan", "cancel", "tidak jadi"},
}


def _action(text: str) -> str | None:
    for action, words in WORDS.items():
        if text in words:
            return action
    return None


async def appointment_step(ctx: RouteContext) -> Decision | None:
    info = ctx.conversation.meta.get("appointment")
    if not isinstance(info, dict) or not info.get("appointment_id"):
        return None
    try:
        start = datetime.fromisoformat(info["start"])
    except (KeyError, TypeError, ValueError):
        return None
    if start <= ctx.now:
        return None
    value = ctx.text.strip()
    data: dict[str, Any] = {"appointment_id": info["appointment_id"], "reminder_id": info.get("reminder_id")}
    if info.get("mode") == "reschedule" and value.startswith("slot:"):
        return Decision().add(Custom("appointment.reply", {**data, "action": "pick", "slot": value[5:]}))
    action = _action(normalize_command(value)) or _action(normalize_command(ctx.raw_text))
    if action is None:
        return None
    return Decision().add(Custom("appointment.reply", {**data, "action": action}))


def slot_choice(start: datetime, tz: str, lang: str) -> Choice:
    local = start.astimezone(ZoneInfo(tz))
    label = format_datetime(local, "EEE d MMM HH.mm" if lang != "en" else "EEE d MMM HH:mm",
                            locale="id" if lang != "en" else "en")
    return Choice(f"{label} {TZ_ABBR.get(tz, '')}".strip(), f"slot:{start.isoformat()}")


def make_applier(rt: Runtime, policy: Policy) -> Any:
    async def apply_reply(actx: ApplyContext, eff: Custom) -> None:
        conn, now = actx.conn, actx.now
        appt_id = int(eff.data["appointment_id"])
        found = (await conn.execute(select(appointments_t).where(appointments_t.c.id == appt_id))).mappings().first()
        cust = (await conn.execute(select(customers).where(customers.c.id == actx.customer_id))).mappings().one()
        lang = (actx.route.language if actx.route else None) or (found["language"] if found else None) or "id"

        async def set_meta(value: dict[str, Any] | None) -> None:
            conv = (await conn.execute(select(conversations.c.meta).where(
                conversations.c.id == actx.conversation_id))).scalar_one()
            meta = dict(conv or {})
            if value is None:
                meta.pop("appointment", None)
            else:
                meta["appointment"] = value
            await conn.execute(update(conversations).where(conversations.c.id == actx.conversation_id)
                               .values(meta=meta))

        if found is None or found["customer_id"] not in {cust["id"], cust.get("merged_into_id")}:
            await set_meta(None)
            return
        appt = dict(found)
        when = format_when(aware(appt["start_at"]), appt["timezone"], lang)  # type: ignore[arg-type]
        action = eff.data["action"]
        if appt["status"] not in OPEN_STATUSES:
            await set_meta(None)
            status_word = {"cancelled": {"id": "dibatalkan", "en": "cancelled"},
                           "done": {"id": "selesai", "en": "done"},
                           "no_show": {"id": "ditandai tidak hadir", "en": "marked as missed"}}
            word = status_word.get(appt["status"], {}).get(lang, appt["status"])
            await rt.pipeline.send(actx, Reply(tr("not_open", lang, status=word), purpose="appointment_reply"))
            return

        async def outcome(value: str) -> None:
            await conn.execute(update(reminders_t).where(
                reminders_t.c.appointment_id == appt_id, reminders_t.c.status == "sent",
                reminders_t.c.outcome.is_(None)).values(outcome=value, updated_at=now))

        def event(status: str) -> None:
            actx.events.append(("appointment.status_changed", {
                "appointment_id": appt_id, "customer_id": actx.customer_id,
                "conversation_id": actx.conversation_id, "status": status}))

        if action in ("confirm", "cancel"):
            status = "confirmed" if action == "confirm" else "cancelled"
            await set_status(conn, appt_id, status, now, actor="customer", conversation_id=actx.conversation_id,
                             channel=actx.channel)
            await outcome(status)
            await set_meta(None)
            await rt.pipeline.send(actx, Reply(tr(status, lang, when=when), purpose="appointment_reply",
                                               meta={"appointment_id": appt_id}))
            event(status)
            return
        service = dict((await conn.execute(select(services_t).where(
            services_t.c.id == appt["service_id"]))).mappings().one())
        slots = await free_slots(conn, appt["provider_id"], service["duration_minutes"], now,
                                 exclude_appointment=appt_id)
        info = {"appointment_id": appt_id, "reminder_id": eff.data.get("reminder_id"), "mode": "reschedule",
                "start": aware(appt["start_at"]).isoformat()}  # type: ignore[union-attr]
        if action == "reschedule":
            await add_touchpoint(conn, customer_id=actx.customer_id, conversation_id=actx.conversation_id,
                                 kind="appointment_reschedule_requested", now=now, channel=actx.channel,
                                 actor="customer", payload={"appointment_id": appt_id, "offered": len(slots)})
            await outcome("reschedule_requested")
            event("reschedule_requested")
            if not slots:
                await set_meta(None)
                if actx.route is not None:
                    decision = handover(actx.route, reason="reschedule", team=policy.team, appointment_id=appt_id)
                    await rt.pipeline.apply(actx, decision.effects, state_before=actx.route.conversation.state)
                return
            await set_meta(info)
            await rt.pipeline.send(actx, Reply(
                tr("slots", lang), choices=tuple(slot_choice(s, appt["timezone"], lang) for s in slots),
                purpose="appointment_slots", meta={"appointment_id": appt_id}))
            return
        # action == "pick": the customer chose one of the offered slots
        try:
            chosen = aware(datetime.fromisoformat(eff.data["slot"]))
        except (KeyError, TypeError, ValueError):
            chosen = None
        fresh = await free_slots(conn, appt["provider_id"], service["duration_minutes"], now, count=200,
                                 exclude_appointment=appt_id)
        if chosen is None or chosen not in fresh:
            await rt.pipeline.send(actx, Reply(
                tr("slot_taken", lang), choices=tuple(slot_choice(s, appt["timezone"], lang) for s in fresh[:5]),
                purpose="appointment_slots", meta={"appointment_id": appt_id}))
            return
        await move_appointment(conn, appt_id, chosen, now, policy, actor="customer",
                               conversation_id=actx.conversation_id)
        await set_meta(None)
        await rt.pipeline.send(actx, Reply(tr("rescheduled", lang, when=format_when(chosen, appt["timezone"], lang)),
                                           purpose="appointment_reply", meta={"appointment_id": appt_id}))
        event("rescheduled")

    return apply_reply
