"""The OpenAPI 3.1 document of ``/api/v1``, written as data beside the handlers (``bot/api/web.py``).

``tests/production/test_api.py`` checks that every route in ``web.ROUTES`` is documented here and vice versa,
and validates the document with ``openapi-spec-validator``; the security suite runs schemathesis against it.
"""

from __future__ import annotations

from typing import Any

from bot.api.auth import SCOPES


def _n(kind: str, **extra: Any) -> dict[str, Any]:
    """A nullable property."""
    return {"type": [kind, "null"], **extra}


S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741
B = {"type": "boolean"}
TS = {"type": "string", "format": "date-time"}
NTS = _n("string", format="date-time")
OBJ = {"type": "object"}
ARR = {"type": "array"}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required if required is not None else list(props)}


SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({"code": S, "message": S})}),
    "Conversation": _obj({
        "id": I, "customer_id": I, "identity_id": I, "channel": S,
        "state": {"type": "string", "enum": ["bot", "queued", "assigned", "pending_customer", "resolved"]},
        "language": _n("string"), "team_id": _n("integer"), "assignee_id": _n("integer"), "priority": S,
        "labels": ARR, "handover": _n("object"), "queued_at": NTS, "first_response_due": NTS,
        "resolution_due": NTS, "first_response_at": NTS, "resolved_at": NTS, "csat_score": _n("integer"),
        "last_message_at": NTS, "created_at": TS, "updated_at": TS,
    }),
    "Message": _obj({
        "id": I, "conversation_id": I, "customer_id": I, "channel": S,
        "direction": {"type": "string", "enum": ["in", "out"]}, "author": S, "agent_id": _n("integer"),
        "body": S, "choices": ARR, "attachments": ARR, "purpose": _n("string"), "status": S, "error": _n("string"),
        "created_at": TS, "sent_at": NTS, "delivered_at": NTS,
    }),
    "Identity": _obj({"id": I, "channel": S, "address": S, "display_name": _n("string"), "verified": B,
                      "unreachable": B, "last_inbound_at": NTS}),
    "Customer": _obj({
        "id": I, "display_name": _n("string"), "language": S, "timezone": S, "tags": ARR, "attributes": OBJ,
        "opted_out": B, "merged_into_id": _n("integer"), "created_at": TS, "last_seen_at": NTS,
        "identities": {"type": "array", "items": {"$ref": "#/components/schemas/Identity"}},
    }, required=["id", "display_name", "language", "tags", "attributes", "opted_out", "created_at"]),
    "Touchpoint": _obj({"id": I, "conversation_id": _n("integer"), "message_id": _n("integer"), "kind": S,
                        "channel": _n("string"), "actor": S, "payload": _n("object"), "created_at": TS}),
    "Article": _obj({
        "id": I, "external_id": S, "title": S, "answer": S, "category": S, "language": S, "tags": ARR,
        "published": B, "version": I, "helpful": I, "unhelpful": I, "created_at": TS, "updated_at": TS,
        "body": S, "questions": ARR,
    }, required=["id", "external_id", "title", "language", "published"]),
    "Agent": _obj({"id": I, "email": S, "name": S, "role": S, "max_chats": I, "presence": S, "presence_at": NTS,
                   "language": S, "active": B, "created_at": TS, "teams": {"type": "array", "items": S}}),
    "Webhook": _obj({"id": I, "url": S, "events": {"type": "array", "items": S}, "active": B,
                     "description": _n("string"), "created_at": TS, "secret": S},
                    required=["id", "url", "events", "active", "created_at"]),
    "Delivery": _obj({"id": I, "subscription_id": I, "event": S, "payload": OBJ,
                      "status": {"type": "string", "enum": ["pending", "delivering", "delivered", "failed"]},
                      "attempts": I, "next_attempt_at": TS, "last_status_code": _n("integer"),
                      "last_error": _n("string"), "log": ARR, "created_at": TS, "delivered_at": NTS}),
    "Token": _obj({"id": I, "name": S, "prefix": S, "scopes": {"type": "array", "items": S},
                   "created_by": _n("string"), "created_at": TS, "last_used_at": NTS, "revoked_at": NTS, "token": S},
                  required=["id", "name", "prefix", "scopes", "created_at"]),
    "AuditEntry": _obj({"id": I, "actor": S, "action": S, "object_type": _n("string"), "object_id": _n("string"),
                        "before": _n("object"), "after": _n("object"), "ip": _n("string"), "created_at": TS}),
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props = {"data": {"type": "array", "items": _ref(name)}, **(extra or {})}
    return {"type": "object", "properties": props, "required": ["data"]}


PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
]
ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}]


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, scope: str, ok: dict[str, Any], *, params: list[Any] | None = None,
        body: dict[str, Any] | None = None, status: str = "200", not_found: bool = False) -> dict[str, Any]:
    err = _ref("Error")
    responses: dict[str, Any] = {status: ok}
    responses["401"] = _json(err, "Missing, unknown or revoked token")
    responses["403"] = _json(err, f"The token lacks the scope {scope}")
    responses["422"] = _json(err, "Invalid parameters or body")
    responses["429"] = _json(err, "Too many failed token attempts from this address")
    if not_found or any(p["in"] == "path" for p in params or []):
        responses["404"] = _json(err, "Not found")
    if body is not None:
        responses.setdefault("404", _json(err, "Not found"))
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": [scope]}], "responses": responses,
                          "x-required-scope": scope}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


NO_CONTENT = {"description": "Done"}


def _paths() -> dict[str, Any]:
    q = {"name": "q", "in": "query", "schema": {"type": "string"}}
    conv_filters = [
        {"name": "state", "in": "query",
         "schema": {"type": "string", "enum": ["bot", "queued", "assigned", "pending_customer", "resolved"]}},
        {"name": "channel", "in": "query", "schema": {"type": "string"}},
        {"name": "customer_id", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {"name": "assignee_id", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {"name": "team_id", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    ]
    conv_patch = {"type": "object", "minProperties": 1, "properties": {
        "state": {"type": "string", "enum": ["bot", "queued", "assigned", "pending_customer", "resolved"]},
        "assignee_id": {"type": ["integer", "null"]},
        "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
        "add_labels": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 60}},
        "reason": {"type": "string"}}}
    send = {"type": "object", "required": ["text"], "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 4096},
        "author": {"type": "string", "enum": ["agent", "bot"], "default": "agent"},
        "agent_id": {"type": "integer"},
        "choices": {"type": "array", "maxItems": 10, "items": _obj({"label": S, "value": S})}}}
    cust_patch = {"type": "object", "minProperties": 1, "properties": {
        "display_name": S, "language": {"type": "string", "enum": ["id", "en"]},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 60}},
        "attributes": OBJ, "opted_out": B}}
    events = {"type": "array", "minItems": 1, "items": {
        "type": "string", "enum": ["message.created", "conversation.status_changed", "appointment.updated"]}}
    hook_props = {"url": {"type": "string", "format": "uri"}, "events": events,
                  "secret": {"type": "string", "minLength": 16, "maxLength": 200}, "active": B, "description": S}
    return {
        "/api/v1/conversations": {"get": _op("List conversations (newest first)", "conversations:read",
                                             _json(_list("Conversation")), params=PAGE + conv_filters)},
        "/api/v1/conversations/{id}": {
            "get": _op("One conversation", "conversations:read", _json(_ref("Conversation")), params=ID),
            "patch": _op("Change state, assignee, priority or labels", "conversations:write",
                         _json(_ref("Conversation")), params=ID, body=conv_patch)},
        "/api/v1/conversations/{id}/messages": {
            "get": _op("Messages of a conversation, oldest first", "messages:read", _json(_list("Message")),
                       params=ID + PAGE[:1] + [{"name": "after_id", "in": "query",
                                                "schema": {"type": "integer", "minimum": 0}}]),
            "post": _op("Send a message as an agent or as the bot (422 when the channel cannot deliver it now)",
                        "messages:write", _json(_list("Message"), "Queued"), params=ID, body=send, status="201")},
        "/api/v1/customers": {"get": _op("List or search customers", "customers:read", _json(_list("Customer")),
                                         params=PAGE + [q])},
        "/api/v1/customers/{id}": {
            "get": _op("One customer with identities", "customers:read", _json(_ref("Customer")), params=ID),
            "patch": _op("Change a customer", "customers:write", _json(_ref("Customer")), params=ID,
                         body=cust_patch)},
        "/api/v1/customers/{id}/timeline": {"get": _op(
            "Every touchpoint of the customer across channels", "customers:read",
            _json({"type": "object", "properties": {"customer_id": I, "data": {"type": "array",
                                                                                "items": _ref("Touchpoint")}},
                   "required": ["customer_id", "data"]}),
            params=ID + [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                      "maximum": 5000}}])},
        "/api/v1/articles": {"get": _op("Knowledge base articles", "articles:read", _json(_list("Article")),
                                        params=PAGE + [q, {"name": "language", "in": "query", "schema": S},
                                                       {"name": "category", "in": "query", "schema": S}])},
        "/api/v1/articles/{id}": {"get": _op("One article", "articles:read", _json(_ref("Article")), params=ID)},
        "/api/v1/agents": {"get": _op("Agents", "agents:read", _json(_list("Agent")), params=PAGE)},
        "/api/v1/agents/{id}": {"get": _op("One agent", "agents:read", _json(_ref("Agent")), params=ID)},
        "/api/v1/webhooks": {
            "get": _op("Outgoing webhook subscriptions", "webhooks:read", _json(_list("Webhook"))),
            "post": _op("Subscribe a URL to events (the secret is returned once)", "webhooks:write",
                        _json(_ref("Webhook"), "Created"), status="201",
                        body={"type": "object", "required": ["url", "events"], "properties": hook_props})},
        "/api/v1/webhooks/{id}": {
            "get": _op("One subscription", "webhooks:read", _json(_ref("Webhook")), params=ID),
            "patch": _op("Change a subscription", "webhooks:write", _json(_ref("Webhook")), params=ID,
                         body={"type": "object", "minProperties": 1, "properties": hook_props}),
            "delete": _op("Delete a subscription and its delivery log", "webhooks:write", NO_CONTENT,
                          params=ID, status="204")},
        "/api/v1/webhooks/{id}/deliveries": {"get": _op(
            "Delivery log: attempts, status codes, last error", "webhooks:read", _json(_list("Delivery")),
            params=ID + PAGE + [{"name": "status", "in": "query", "schema": {
                "type": "string", "enum": ["pending", "delivering", "delivered", "failed"]}}])},
        "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry": {"post": _op(
            "Deliver again now", "webhooks:write", _json(_ref("Delivery"), "Queued"), status="202",
            params=ID + [{"name": "delivery_id", "in": "path", "required": True,
                          "schema": {"type": "integer", "minimum": 1}}])},
        "/api/v1/tokens": {
            "get": _op("API tokens (never their secrets)", "admin", _json(_list("Token"))),
            "post": _op("Create a token (the plain token is returned once)", "admin", _json(_ref("Token"), "Created"),
                        status="201", body={"type": "object", "required": ["name", "scopes"], "properties": {
                            "name": {"type": "string", "minLength": 1, "maxLength": 200},
                            "scopes": {"type": "array", "minItems": 1,
                                       "items": {"type": "string", "enum": list(SCOPES)}}}})},
        "/api/v1/tokens/{id}": {"delete": _op("Revoke a token", "admin", NO_CONTENT, params=ID, status="204")},
        "/api/v1/audit": {"get": _op("Audit log of console and API writes (newest first)", "admin",
                                     _json(_list("AuditEntry", {"total": I})), params=PAGE)},
    }


def build_document(server_url: str = "http://127.0.0.1:8080", extra_paths: dict[str, Any] | None = None,
                   extra_schemas: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document; features with routes of their own (appointments) add theirs through ``extra_*``
    (``rt.services["openapi"]``, see ``add_to_document``)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Loket REST API", "version": "1.0.0",
                 "description": "Conversations, messages, customers with timelines, articles, agents, outgoing "
                                "webhooks, API tokens and appointments. Authenticate with `Authorization: Bearer lkt_…` "
                                "(`loket tokens create --name NAME --scopes a,b`). Errors are "
                                "`{\"error\": {\"code\": …, \"message\": …}}`. Appointments: docs/reminders.md."},
        "servers": [{"url": server_url}],
        "paths": {**_paths(), **(extra_paths or {})},
        "components": {
            "schemas": {**SCHEMAS, **(extra_schemas or {})},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Scopes: " + "; ".join(f"{k}: {v}"
                                                                                 for k, v in SCOPES.items())}},
        },
    }


def add_to_document(services: dict[str, Any], paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """A feature's own operations and schemas, served in ``/api/v1/openapi.json`` beside the core's."""
    extra = services.setdefault("openapi", {"paths": {}, "schemas": {}})
    extra["paths"].update(paths)
    extra["schemas"].update(schemas)


# the helpers, for features that describe their own operations
operation, response, ref, obj, nullable = _op, _json, _ref, _obj, _n
