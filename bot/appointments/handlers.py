"""Flow handlers (``call: {handler: …}`` in a flow): book, list free slots, confirm, cancel, reschedule.

They run inside the routing transaction (``ctx.conn``) for the conversation's own customer, so a booking and
the bot's answer commit together. Slots are exchanged as ISO-8601 UTC strings (the ``value`` of a choice,
optionally prefixed ``slot:``); labels are in the customer's language and timezone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from bot.appointments.models import appointments_t, providers_t, services_t
from bot.appointments.replies import slot_choice
from bot.appointments.service import (
    OPEN_STATUSES,
    Policy,
    format_when,
    free_slots,
    get_or_create_service,
    move_appointment,
    new_external_id,
    plan_reminders,
    resolve_timezone,
    set_status,
)
from bot.clock import aware
from bot.handlers.registry import HandlerContext, HandlerError, register
from storage.repositories import add_touchpoint


def _arg(ctx: HandlerContext, name: str, default: Any = None) -> Any:
    value = ctx.args.get(name)
    if value in (None, ""):
        value = ctx.slots.get(name, default)
    return value


def _policy(ctx: HandlerContext) -> Policy:
    return ctx.services.get("appointments_policy") or Policy()


def _parse_slot(raw: Any) -> datetime:
    text = str(raw or "").strip()
    if text.startswith("slot:"):
        text = text[5:]
    try:
        value = aware(datetime.fromisoformat(text))
    except ValueError as exc:
        raise HandlerError(f"{raw!r} is not a time slot") from exc
    assert value is not None
    return value


async def _provider(ctx: HandlerContext, name: str | None) -> dict[str, Any]:
    q = select(providers_t).order_by(providers_t.c.id)
    if name:
        q = q.where(providers_t.c.name == name)
    row = (await ctx.conn.execute(q.limit(1))).mappings().first()
    if row is None:
        raise HandlerError(f"no provider {name!r}" if name else "no provider is set up for appointments")
    return dict(row)


async def _service(ctx: HandlerContext, name: str | None) -> dict[str, Any]:
    if name:
        return await get_or_create_service(ctx.conn, str(name), ctx.now)
    row = (await ctx.conn.execute(select(services_t).order_by(services_t.c.id).limit(1))).mappings().first()
    if row is None:
        raise HandlerError("no service is set up for appointments")
    return dict(row)


async def _customer_appointment(ctx: HandlerContext) -> dict[str, Any]:
    appt_id = _arg(ctx, "appointment_id")
    q = select(appointments_t).where(appointments_t.c.customer_id == ctx.customer_id)
    if appt_id:
        q = q.where(appointments_t.c.id == int(appt_id))
    else:
        q = q.where(appointments_t.c.status.in_(OPEN_STATUSES), appointments_t.c.start_at > ctx.now) \
            .order_by(appointments_t.c.start_at)
    row = (await ctx.conn.execute(q.limit(1))).mappings().first()
    if row is None:
        raise HandlerError("the customer has no upcoming appointment")
    return dict(row)


def _describe(appt: dict[str, Any], lang: str) -> dict[str, Any]:
    start = aware(appt["start_at"])
    assert start is not None
    return {"appointment_id": appt["id"], "status": appt["status"], "start": start.isoformat(),
            "when": format_when(start, appt["timezone"], lang), "location": appt["location"]}


@register("appointment_slots")
async def appointment_slots(ctx: HandlerContext) -> dict[str, Any]:
    """Free slots of a provider: ``{"slots": [{"label", "value"}], "count": n}`` (args: provider, service, count)."""
    provider = await _provider(ctx, _arg(ctx, "provider"))
    service = await _service(ctx, _arg(ctx, "service"))
    slots = await free_slots(ctx.conn, provider["id"], service["duration_minutes"], ctx.now,
                             count=int(_arg(ctx, "count", 5)))
    tz = ctx.customer_timezone or provider["timezone"]
    return {"slots": [slot_choice(s, tz, ctx.language).to_dict() for s in slots], "count": len(slots),
            "provider": provider["name"], "service": service["name"]}


@register("book_appointment")
async def book_appointment(ctx: HandlerContext) -> dict[str, Any]:
    """Book the chosen slot for this customer (args: slot, provider, service, location, channel)."""
    provider = await _provider(ctx, _arg(ctx, "provider"))
    service = await _service(ctx, _arg(ctx, "service"))
    start = _parse_slot(_arg(ctx, "slot"))
    free = await free_slots(ctx.conn, provider["id"], service["duration_minutes"], ctx.now, count=500)
    if start not in free:
        raise HandlerError("that time is no longer free")
    tz = resolve_timezone(ctx.customer_timezone or provider["timezone"])
    channel = _arg(ctx, "channel") or (ctx.channel if ctx.channel in ("whatsapp", "telegram", "email") else None)
    appt_id = (await ctx.conn.execute(appointments_t.insert().values(
        external_id=new_external_id("flow"), customer_id=ctx.customer_id, service_id=service["id"],
        provider_id=provider["id"], location=_arg(ctx, "location") or provider["location"] or "", start_at=start,
        timezone=tz, status="booked", channel=channel, language=ctx.language, source="flow", meta={},
        created_at=ctx.now, updated_at=ctx.now,
    ).returning(appointments_t.c.id))).scalar_one()
    await plan_reminders(ctx.conn, appt_id, start, service, ctx.now, _policy(ctx))
    await add_touchpoint(ctx.conn, customer_id=ctx.customer_id, conversation_id=ctx.conversation_id,
                         kind="appointment_booked", now=ctx.now, channel=ctx.channel, actor="flow",
                         payload={"appointment_id": appt_id, "start": start.isoformat(), "service": service["name"]})
    appt = dict((await ctx.conn.execute(select(appointments_t).where(appointments_t.c.id == appt_id)))
                .mappings().one())
    return _describe(appt, ctx.language)


async def _set_customer_appointment(ctx: HandlerContext, status: str) -> dict[str, Any]:
    appt = await _customer_appointment(ctx)
    appt = await set_status(ctx.conn, appt["id"], status, ctx.now, actor="customer",
                            conversation_id=ctx.conversation_id, channel=ctx.channel)
    return _describe(appt, ctx.language)


@register("confirm_appointment")
async def confirm_appointment(ctx: HandlerContext) -> dict[str, Any]:
    return await _set_customer_appointment(ctx, "confirmed")


@register("cancel_appointment")
async def cancel_appointment(ctx: HandlerContext) -> dict[str, Any]:
    return await _set_customer_appointment(ctx, "cancelled")


@register("reschedule_appointment")
async def reschedule_appointment(ctx: HandlerContext) -> dict[str, Any]:
    """Move the customer's (next) appointment to ``slot`` if it is free."""
    appt = await _customer_appointment(ctx)
    service = dict((await ctx.conn.execute(select(services_t).where(services_t.c.id == appt["service_id"])))
                   .mappings().one())
    start = _parse_slot(_arg(ctx, "slot"))
    free = await free_slots(ctx.conn, appt["provider_id"], service["duration_minutes"], ctx.now, count=500,
                            exclude_appointment=appt["id"])
    if start not in free:
        raise HandlerError("that time is no longer free")
    appt = await move_appointment(ctx.conn, appt["id"], start, ctx.now, _policy(ctx), actor="customer",
                                  conversation_id=ctx.conversation_id)
    await ctx.conn.execute(update(appointments_t).where(appointments_t.c.id == appt["id"])
                           .values(updated_at=ctx.now))
    return _describe(appt, ctx.language)


@register("next_appointment")
async def next_appointment(ctx: HandlerContext) -> dict[str, Any]:
    """The customer's next open appointment, or ``{"found": false}``."""
    try:
        appt = await _customer_appointment(ctx)
    except HandlerError:
        return {"found": False}
    return {"found": True, **_describe(appt, ctx.language)}
