"""The appointments operations of the OpenAPI document (``/api/v1/openapi.json``), beside their handlers in
``bot/appointments/api.py``; the security suite runs schemathesis against them with the core's."""

from __future__ import annotations

from typing import Any

from bot.api.openapi import nullable, obj, operation, ref, response

S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741
TS = {"type": "string", "format": "date-time"}
STATUS = {"type": "string", "enum": ["booked", "confirmed", "rescheduled", "cancelled", "no_show", "done"]}
ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}]

SCHEMAS: dict[str, Any] = {
    "Reminder": obj({"stage": S, "due_at": TS, "status": S, "channel": nullable("string"),
                     "message_id": nullable("integer"), "outcome": nullable("string"), "reason": nullable("string"),
                     "attempts": I, "fallback": {"type": "array"}}),
    "Appointment": obj({
        "id": I, "external_id": S, "customer_id": I, "service_id": I, "provider_id": I, "location": S,
        "start": TS, "start_local": TS, "timezone": S, "status": STATUS, "channel": nullable("string"),
        "language": S, "source": S, "created_at": TS, "updated_at": TS, "service": nullable("string"),
        "provider": nullable("string"), "reminders": {"type": "array", "items": ref("Reminder")},
        "result": {"type": "string", "enum": ["created", "updated", "rescheduled", "unchanged"]},
    }, required=["id", "external_id", "customer_id", "start", "timezone", "status"]),
}

FIELDS = ("external_id", "name", "phone", "email", "telegram_chat_id", "service", "provider", "location", "start",
          "timezone", "channel", "language")
CREATE = {"type": "object", "additionalProperties": False, "properties": {k: S for k in FIELDS},
          "description": "The CSV's fields; start is local YYYY-MM-DD HH:MM in timezone, or ISO-8601 with an offset"}
PATCH = {"type": "object", "additionalProperties": False, "minProperties": 1,
         "properties": {"status": STATUS, "start": {"type": "string", "description": "ISO-8601 with an offset"}}}
LIST = {"type": "object", "required": ["items", "limit", "offset"],
        "properties": {"items": {"type": "array", "items": ref("Appointment")}, "limit": I, "offset": I}}
FILTERS = [
    {"name": "status", "in": "query", "schema": S, "description": "one status or several, comma-separated"},
    {"name": "customer_id", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "external_id", "in": "query", "schema": S},
    {"name": "from", "in": "query", "schema": TS},
    {"name": "to", "in": "query", "schema": TS},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
]


def paths() -> dict[str, Any]:
    create = operation("Create an appointment, or update the one with this external_id", "appointments:write",
                       response(ref("Appointment"), "Created"), body=CREATE, status="201")
    create["responses"]["200"] = response(ref("Appointment"), "Updated (the external_id existed)")
    return {
        "/api/v1/appointments": {
            "get": operation("List appointments (by start)", "appointments:read", response(LIST), params=FILTERS),
            "post": create},
        "/api/v1/appointments/{id}": {
            "get": operation("One appointment with its reminders", "appointments:read", response(ref("Appointment")),
                             params=ID),
            "patch": operation("Change the status and/or move the start (reminders are planned again)",
                               "appointments:write", response(ref("Appointment")), params=ID, body=PATCH)},
    }
