"""REST endpoints under ``/api/v1/appointments`` (JSON).

* ``GET  /api/v1/appointments`` — list; filters ``status``, ``customer_id``, ``external_id``, ``from``, ``to``
  (ISO-8601), ``limit`` (≤ 500), ``offset``.
* ``GET  /api/v1/appointments/{id}`` — one, with its reminders.
* ``POST /api/v1/appointments`` — create or update by ``external_id`` (same fields as the CSV; ``start`` is
  local ``YYYY-MM-DD HH:MM`` in ``timezone``, or an ISO-8601 time with offset).
* ``PATCH /api/v1/appointments/{id}`` — ``{"status": …}`` and/or ``{"start": …}`` (moves it, replans reminders).

Authorization: the shared scoped API tokens of ``bot.api.auth`` (``Authorization: Bearer lkt_…``; create one
with ``loket tokens create``): ``appointments:read`` for GET, ``appointments:write`` for POST and PATCH;
401 without a valid token, 403 without the scope, 429 after repeated bad tokens from one address.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiohttp import web
from sqlalchemy import select

from bot.api.auth import token_auth
from bot.api.openapi import add_to_document
from bot.appointments import openapi
from bot.appointments.models import appointments_t, providers_t, reminders_t, services_t
from bot.appointments.service import (
    AppointmentError,
    Policy,
    appointment_json,
    move_appointment,
    resolve_timezone,
    set_status,
    upsert_appointment,
    validate_input,
)
from bot.clock import aware

if TYPE_CHECKING:
    from bot.runtime import Runtime


MAX_ID = 2**62  # as the core API: larger ids cannot be in the database (and would overflow its integers)


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


def _iso(value: str, name: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise AppointmentError(f"{name}={value!r} is not an ISO-8601 time such as 2026-11-24T09:30:00+07:00") from exc
    if dt.tzinfo is None:
        raise AppointmentError(f"{name}={value!r} needs a UTC offset, e.g. 2026-11-24T09:30:00+07:00")
    return dt.astimezone(UTC)


def install(rt: Runtime, policy: Policy) -> None:
    def guard(scope: str) -> Any:
        def deco(fn: Any) -> Any:
            async def wrapper(request: web.Request) -> web.StreamResponse:
                checked = await token_auth(rt).check(request, scope)
                if isinstance(checked, web.StreamResponse):
                    return checked
                try:
                    return await fn(request)
                except AppointmentError as exc:
                    return _error(422, "invalid", str(exc))
            wrapper.required_scope = scope  # type: ignore[attr-defined]  # as require_scope does: the matrix reads it
            return wrapper
        return deco

    async def _names(conn: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        svcs = {r.id: r.name for r in await conn.execute(select(services_t.c.id, services_t.c.name))}
        provs = {r.id: r.name for r in await conn.execute(select(providers_t.c.id, providers_t.c.name))}
        return [{**appointment_json(r), "service": svcs.get(r["service_id"]), "provider": provs.get(r["provider_id"])}
                for r in rows]

    @guard("appointments:read")
    async def list_(request: web.Request) -> web.Response:
        q = select(appointments_t)
        p = request.query
        if p.get("status"):
            q = q.where(appointments_t.c.status.in_(p["status"].split(",")))
        if p.get("customer_id"):
            try:
                customer_id = int(p["customer_id"])
            except ValueError as exc:
                raise AppointmentError("customer_id must be a number") from exc
            if not 1 <= customer_id <= MAX_ID:
                raise AppointmentError(f"customer_id must be between 1 and {MAX_ID}")
            q = q.where(appointments_t.c.customer_id == customer_id)
        if p.get("external_id"):
            q = q.where(appointments_t.c.external_id == p["external_id"])
        if p.get("from"):
            q = q.where(appointments_t.c.start_at >= _iso(p["from"], "from"))
        if p.get("to"):
            q = q.where(appointments_t.c.start_at < _iso(p["to"], "to"))
        try:
            limit = max(1, min(500, int(p.get("limit", "100"))))
            offset = max(0, min(10**9, int(p.get("offset", "0"))))
        except ValueError as exc:
            raise AppointmentError("limit and offset must be numbers") from exc
        async with rt.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(
                q.order_by(appointments_t.c.start_at, appointments_t.c.id).limit(limit).offset(offset))).mappings()]
            items = await _names(conn, rows)
        return web.json_response({"items": items, "limit": limit, "offset": offset})

    async def _one(appt_id: int) -> dict[str, Any] | None:
        async with rt.engine.connect() as conn:
            row = (await conn.execute(select(appointments_t).where(appointments_t.c.id == appt_id))).mappings().first()
            if row is None:
                return None
            out = (await _names(conn, [dict(row)]))[0]
            rems = (await conn.execute(select(reminders_t).where(reminders_t.c.appointment_id == appt_id)
                                       .order_by(reminders_t.c.due_at))).mappings()
            out["reminders"] = [{
                "stage": r["stage"], "due_at": aware(r["due_at"]).isoformat(),  # type: ignore[union-attr]
                "status": r["status"], "channel": r["channel"], "message_id": r["message_id"],
                "outcome": r["outcome"], "reason": r["reason"], "attempts": r["attempts"],
                "fallback": r["fallback"] or [],
            } for r in rems]
            return out

    def _id(request: web.Request) -> int:
        try:
            value = int(request.match_info["id"])
        except ValueError as exc:
            raise web.HTTPNotFound() from exc
        if not 1 <= value <= MAX_ID:  # beyond what the database can hold: no such appointment
            raise web.HTTPNotFound()
        return value

    @guard("appointments:read")
    async def get_(request: web.Request) -> web.Response:
        out = await _one(_id(request))
        if out is None:
            return _error(404, "not_found", "no such appointment")
        return web.json_response(out)

    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AppointmentError("the body must be a JSON object") from exc
        if not isinstance(body, dict):
            raise AppointmentError("the body must be a JSON object")
        return body

    @guard("appointments:write")
    async def create(request: web.Request) -> web.Response:
        body = await _body(request)
        now = rt.clock.now()
        unknown = set(body) - {"external_id", "name", "phone", "email", "telegram_chat_id", "service", "provider",
                               "location", "start", "timezone", "channel", "language"}
        if unknown:
            raise AppointmentError("unknown fields: " + ", ".join(sorted(unknown)))
        row = dict(body)
        start = str(body.get("start") or "")
        if "T" in start:  # ISO with offset → local time in the given timezone
            tz = resolve_timezone(str(body.get("timezone") or ""))
            row["start"] = _iso(start, "start").astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")
        row.setdefault("external_id", "")
        if not row["external_id"]:
            from bot.appointments.service import new_external_id

            row["external_id"] = new_external_id("api")
        inp, errors = validate_input(row, now)
        if inp is None:
            return _error(422, "invalid", "; ".join(errors), errors=errors)
        async with rt.engine.begin() as conn:
            appt_id, outcome = await upsert_appointment(conn, inp, now, policy, source="api")
        scheduler = rt.services.get("reminders")
        if scheduler is not None:
            scheduler.nudge()
        out = await _one(appt_id)
        return web.json_response({**(out or {}), "result": outcome}, status=201 if outcome == "created" else 200)

    @guard("appointments:write")
    async def patch(request: web.Request) -> web.Response:
        appt_id = _id(request)
        body = await _body(request)
        unknown = set(body) - {"status", "start"}
        if unknown or not body:
            raise AppointmentError("send {\"status\": …} and/or {\"start\": ISO-8601 with offset}")
        now = rt.clock.now()
        async with rt.engine.begin() as conn:
            row = (await conn.execute(select(appointments_t).where(appointments_t.c.id == appt_id))).mappings().first()
            if row is None:
                return _error(404, "not_found", "no such appointment")
            if body.get("start"):
                start = _iso(str(body["start"]), "start")
                if start <= now:
                    raise AppointmentError("start is in the past")
                await move_appointment(conn, appt_id, start, now, policy, actor="api")
            if body.get("status"):
                await set_status(conn, appt_id, str(body["status"]), now, actor="api")
        await rt.events.publish([("appointment.status_changed", {"appointment_id": appt_id,
                                                                  "customer_id": row["customer_id"],
                                                                  "status": body.get("status") or "rescheduled"})])
        return web.json_response(await _one(appt_id))

    add_to_document(rt.services, openapi.paths(), openapi.SCHEMAS)
    rt.app.router.add_get("/api/v1/appointments", list_)
    rt.app.router.add_post("/api/v1/appointments", create)
    rt.app.router.add_get("/api/v1/appointments/{id}", get_)
    rt.app.router.add_patch("/api/v1/appointments/{id}", patch)
