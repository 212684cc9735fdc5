"""``/api/v1`` handlers (component ``bot.api.web``). The OpenAPI document (``bot/api/openapi.py``) lists the same
routes; a test checks both agree. Appointments register their own ``/api/v1/appointments`` routes.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime
from typing import Any

from aiohttp import web
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.api.auth import (
    PRINCIPAL,
    SCOPES,
    InvalidScope,
    Principal,
    create_token,
    error,
    require_scope,
    revoke_token,
    token_auth,
)
from bot.api.models import api_tokens, webhook_deliveries, webhook_subscriptions
from bot.api.openapi import build_document
from bot.clock import aware
from bot.effects import Custom, Send, SetState, UpdateConversation
from bot.messages import Choice, Reply
from bot.outbound import ConversationNotFound, SendRejected, act_on_conversation
from bot.pipeline import ApplyContext
from bot.runtime import Runtime, get_runtime
from storage.models import agents, audit_log, conversations, customers, identities, messages, teams
from storage.repositories import add_touchpoint, customer_timeline, customer_with_identities

log = logging.getLogger("loket.api")

STATES = ("bot", "queued", "assigned", "pending_customer", "resolved")
PRIORITIES = ("low", "normal", "high", "urgent")
WEBHOOK_EVENTS = ("message.created", "conversation.status_changed", "appointment.updated")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return (aware(value) or value).isoformat()  # SQLite hands back naive UTC
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(_jsonable(data), status=status)


def _int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", f"{name} must be an integer") from exc
    if not lo <= value <= hi:
        raise ApiError(422, "invalid_parameter", f"{name} must be between {lo} and {hi}")
    return value


def _path_id(request: web.Request, name: str = "id") -> int:
    try:
        value = int(request.match_info[name])
    except ValueError as exc:
        raise ApiError(404, "not_found", f"no such {name}") from exc
    if not 1 <= value <= 2**62:
        raise ApiError(404, "not_found", f"no such {name}")
    return value


def _page(request: web.Request) -> tuple[int, int]:
    return _int_param(request, "limit", 50, 1, 200) or 50, _int_param(request, "offset", 0, 0, 10**9) or 0


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_json", "the request body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_json", "the request body must be a JSON object")
    return data


def _opt(data: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False) -> Any:
    if name not in data or data[name] is None:
        if required:
            raise ApiError(422, "invalid_body", f"{name} is required")
        return None
    value = data[name]
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        raise ApiError(422, "invalid_body", f"{name} has the wrong type")
    return value


@web.middleware
async def api_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every ``/api/v1`` answer, errors included, is JSON of one shape."""
    if not request.path.startswith("/api/v1"):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        return error(exc.status, code, exc.reason or code)
    except Exception:  # noqa: BLE001 - log it, answer JSON
        log.exception("API request failed: %s %s", request.method, request.path)
        return error(500, "internal", "internal error; see the server log")


async def _audit(conn: AsyncConnection, request: web.Request, action: str, object_type: str, object_id: Any,
                 before: dict[str, Any] | None, after: dict[str, Any] | None, now: Any) -> None:
    principal: Principal | None = request.get(PRINCIPAL)
    await conn.execute(insert(audit_log), {
        "actor": principal.actor if principal else "api", "action": action, "object_type": object_type,
        "object_id": str(object_id), "before": _jsonable(before), "after": _jsonable(after),
        "ip": request.remote, "created_at": now,
    })


# ------------------------------------------------------------------------------------------------ conversations
def _conversation(row: Any) -> dict[str, Any]:
    keys = ("id", "customer_id", "identity_id", "channel", "state", "language", "team_id", "assignee_id",
            "priority", "labels", "handover", "queued_at", "first_response_due", "resolution_due",
            "first_response_at", "resolved_at", "csat_score", "last_message_at", "created_at", "updated_at")
    return {k: row[k] for k in keys}


@require_scope("conversations:read")
async def list_conversations(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    limit, offset = _page(request)
    q = select(conversations)
    state = request.query.get("state")
    if state:
        if state not in STATES:
            raise ApiError(422, "invalid_parameter", f"state must be one of {', '.join(STATES)}")
        q = q.where(conversations.c.state == state)
    channel = request.query.get("channel")
    if channel:
        q = q.where(conversations.c.channel == channel)
    for name, col in (("customer_id", conversations.c.customer_id), ("assignee_id", conversations.c.assignee_id),
                      ("team_id", conversations.c.team_id)):
        value = _int_param(request, name, None, 1, 2**62)
        if value is not None:
            q = q.where(col == value)
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(conversations.c.id.desc()).limit(limit).offset(offset))).mappings().all()
    return ok({"data": [_conversation(r) for r in rows], "limit": limit, "offset": offset})


async def _row_or_404(conn: AsyncConnection, table: Any, pk: int, noun: str) -> Any:
    """The row of ``table`` with id ``pk``, or the API's 404 naming what was not found."""
    row = (await conn.execute(select(table).where(table.c.id == pk))).mappings().first()
    if row is None:
        raise ApiError(404, "not_found", f"no {noun} with id {pk}")
    return row


async def _load_conversation(conn: AsyncConnection, conv_id: int) -> Any:
    return await _row_or_404(conn, conversations, conv_id, "conversation")


@require_scope("conversations:read")
async def get_conversation(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    async with rt.engine.connect() as conn:
        row = await _load_conversation(conn, _path_id(request))
    return ok(_conversation(row))


async def _apply_assign(actx: ApplyContext, eff: Custom) -> None:
    agent_id = eff.data["agent_id"]
    await actx.conn.execute(
        update(conversations).where(conversations.c.id == actx.conversation_id)
        .values(assignee_id=agent_id, updated_at=actx.now)
    )
    await add_touchpoint(actx.conn, customer_id=actx.customer_id, conversation_id=actx.conversation_id,
                         kind="assigned", now=actx.now, channel=actx.channel, actor=eff.data.get("actor", "api"),
                         payload={"agent_id": agent_id})
    actx.events.append(("conversation.assigned", {"conversation_id": actx.conversation_id,
                                                  "customer_id": actx.customer_id, "agent_id": agent_id}))


async def _apply_audit(actx: ApplyContext, eff: Custom) -> None:
    await actx.conn.execute(insert(audit_log), {**eff.data, "created_at": actx.now})


def _audit_effect(request: web.Request, action: str, object_type: str, object_id: Any,
                  before: dict[str, Any] | None, after: dict[str, Any] | None) -> Custom:
    principal: Principal | None = request.get(PRINCIPAL)
    return Custom("api.audit", {
        "actor": principal.actor if principal else "api", "action": action, "object_type": object_type,
        "object_id": str(object_id), "before": _jsonable(before), "after": _jsonable(after), "ip": request.remote,
    })


@require_scope("conversations:write")
async def patch_conversation(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    conv_id = _path_id(request)
    data = await _body(request)
    state = _opt(data, "state", str)
    priority = _opt(data, "priority", str)
    labels = _opt(data, "add_labels", list)
    reason = _opt(data, "reason", str) or "api"
    if state is not None and state not in STATES:
        raise ApiError(422, "invalid_body", f"state must be one of {', '.join(STATES)}")
    if priority is not None and priority not in PRIORITIES:
        raise ApiError(422, "invalid_body", f"priority must be one of {', '.join(PRIORITIES)}")
    if labels is not None and not all(isinstance(x, str) and 0 < len(x) <= 60 for x in labels):
        raise ApiError(422, "invalid_body", "add_labels must be a list of short strings")
    assign = "assignee_id" in data
    agent_id = data.get("assignee_id")
    async with rt.engine.connect() as conn:
        before = await _load_conversation(conn, conv_id)
        if assign and agent_id is not None:
            if isinstance(agent_id, bool) or not isinstance(agent_id, int):
                raise ApiError(422, "invalid_body", "assignee_id must be an agent id or null")
            found = (await conn.execute(select(agents.c.id).where(agents.c.id == agent_id,
                                                                   agents.c.active.is_(True)))).first()
            if found is None:
                raise ApiError(422, "invalid_body", f"no active agent with id {agent_id}")
    if state is None and priority is None and labels is None and not assign:
        raise ApiError(422, "invalid_body", "nothing to change: give state, assignee_id, priority or add_labels")
    effects: list[Any] = []
    if state is not None and state != before["state"]:
        if state in {"resolved", "bot"} and "console.close_sla" in rt.pipeline.appliers:
            # the agent console's SLA: a target passed counts as a breach, and the episode ends here
            effects.append(Custom("console.close_sla", {"end": True}))
        effects.append(SetState(state, reason=reason))
    if assign:
        principal: Principal = request[PRINCIPAL]
        effects.append(Custom("api.assign", {"agent_id": agent_id, "actor": principal.actor}))
        if agent_id is not None and state is None and before["state"] in {"bot", "queued"}:
            effects.append(SetState("assigned", reason=reason))
    if priority is not None or labels:
        effects.append(UpdateConversation(priority=priority, add_labels=tuple(labels or ())))
    effects.append(_audit_effect(request, "conversation.update", "conversation", conv_id, _conversation(before),
                                 {k: data[k] for k in ("state", "assignee_id", "priority", "add_labels") if k in data}))
    try:
        await act_on_conversation(rt, conv_id, effects)
    except ConversationNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    async with rt.engine.connect() as conn:
        row = await _load_conversation(conn, conv_id)
    return ok(_conversation(row))


# ------------------------------------------------------------------------------------------------ messages
def _message(row: Any) -> dict[str, Any]:
    keys = ("id", "conversation_id", "customer_id", "channel", "direction", "author", "agent_id", "body",
            "choices", "attachments", "purpose", "status", "error", "created_at", "sent_at", "delivered_at")
    return {k: row[k] for k in keys}


@require_scope("messages:read")
async def list_messages(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    conv_id = _path_id(request)
    limit, _ = _page(request)
    after = _int_param(request, "after_id", 0, 0, 2**62) or 0
    async with rt.engine.connect() as conn:
        await _load_conversation(conn, conv_id)
        rows = (await conn.execute(
            select(messages).where(messages.c.conversation_id == conv_id, messages.c.id > after)
            .order_by(messages.c.id).limit(limit)
        )).mappings().all()
    return ok({"data": [_message(r) for r in rows], "limit": limit})


@require_scope("messages:write")
async def send_message(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    conv_id = _path_id(request)
    data = await _body(request)
    text = _opt(data, "text", str, required=True)
    if not text.strip() or len(text) > 4096:
        raise ApiError(422, "invalid_body", "text must be 1–4096 characters")
    author = _opt(data, "author", str) or "agent"
    if author not in {"agent", "bot"}:
        raise ApiError(422, "invalid_body", "author must be 'agent' or 'bot'")
    agent_id = _opt(data, "agent_id", int)
    raw_choices = _opt(data, "choices", list) or []
    choices = []
    for c in raw_choices[:10]:
        if not isinstance(c, dict) or not isinstance(c.get("label"), str) or not isinstance(c.get("value"), str):
            raise ApiError(422, "invalid_body", "choices must be objects with string label and value")
        choices.append(Choice(c["label"][:200], c["value"][:200]))
    async with rt.engine.connect() as conn:
        conv = await _load_conversation(conn, conv_id)
        if author == "agent":
            if agent_id is None:
                raise ApiError(422, "invalid_body", "agent_id is required when author is 'agent'")
            if (await conn.execute(select(agents.c.id).where(agents.c.id == agent_id))).first() is None:
                raise ApiError(422, "invalid_body", f"no agent with id {agent_id}")
    reply = Reply(text=text, choices=tuple(choices), author=author, agent_id=agent_id if author == "agent" else None)
    effects: list[Any] = [Send(reply)]
    effects.append(_audit_effect(request, "message.send", "conversation", conv_id, None,
                                 {"author": author, "agent_id": agent_id, "length": len(text)}))
    try:
        ids = await act_on_conversation(rt, conv_id, effects)
    except SendRejected as exc:
        return error(422, exc.code, exc.reason)
    except ConversationNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(select(messages).where(messages.c.id.in_(ids)).order_by(messages.c.id))
                ).mappings().all()
    log.info("API message queued", extra={"conversation_id": conv_id, "message_id": ids[0] if ids else None,
                                          "channel": conv["channel"]})
    return ok({"data": [_message(r) for r in rows]}, status=201)


# ------------------------------------------------------------------------------------------------ customers
def _customer(row: Any) -> dict[str, Any]:
    keys = ("id", "display_name", "language", "timezone", "tags", "attributes", "opted_out", "merged_into_id",
            "created_at", "last_seen_at")
    out = {k: row[k] for k in keys}
    if "identities" in row:
        out["identities"] = [{k: i[k] for k in ("id", "channel", "address", "display_name", "verified",
                                                  "unreachable", "last_inbound_at")} for i in row["identities"]]
    return out


@require_scope("customers:read")
async def list_customers(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    limit, offset = _page(request)
    q = select(customers)
    term = request.query.get("q", "").strip()
    if term:
        like = f"%{term[:100]}%"
        sub = select(identities.c.customer_id).where(identities.c.address.ilike(like))
        q = q.where(or_(customers.c.display_name.ilike(like), customers.c.id.in_(sub)))
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(customers.c.id.desc()).limit(limit).offset(offset))).mappings().all()
    return ok({"data": [_customer(r) for r in rows], "limit": limit, "offset": offset})


@require_scope("customers:read")
async def get_customer(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    cid = _path_id(request)
    async with rt.engine.connect() as conn:
        cust = await customer_with_identities(conn, cid)
    if cust is None:
        raise ApiError(404, "not_found", f"no customer with id {cid}")
    return ok(_customer(cust))


@require_scope("customers:write")
async def patch_customer(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    cid = _path_id(request)
    data = await _body(request)
    values: dict[str, Any] = {}
    name = _opt(data, "display_name", str)
    if name is not None:
        values["display_name"] = name[:300]
    lang = _opt(data, "language", str)
    if lang is not None:
        if lang not in {"id", "en"}:
            raise ApiError(422, "invalid_body", "language must be 'id' or 'en'")
        values["language"] = lang
    tags = _opt(data, "tags", list)
    if tags is not None:
        if not all(isinstance(t, str) and 0 < len(t) <= 60 for t in tags):
            raise ApiError(422, "invalid_body", "tags must be short strings")
        values["tags"] = sorted(set(tags))
    attrs = _opt(data, "attributes", dict)
    opted = _opt(data, "opted_out", bool)
    if not values and attrs is None and opted is None:
        raise ApiError(422, "invalid_body", "nothing to change: give display_name, language, tags, attributes "
                                            "or opted_out")
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        before = await _row_or_404(conn, customers, cid, "customer")
        if attrs is not None:
            values["attributes"] = {**(before["attributes"] or {}), **attrs}
        if opted is not None:
            values["opted_out"] = opted
            values["opted_out_at"] = now if opted else None
        await conn.execute(update(customers).where(customers.c.id == cid).values(**values))
        await add_touchpoint(conn, customer_id=cid, conversation_id=None, kind="customer_updated", now=now,
                             channel=None, actor=request[PRINCIPAL].actor,
                             payload={"fields": sorted(values)})
        await _audit(conn, request, "customer.update", "customer", cid, _customer(before),
                     {k: v for k, v in values.items() if k != "opted_out_at"}, now)
        cust = await customer_with_identities(conn, cid)
    return ok(_customer(cust))


@require_scope("customers:read")
async def get_timeline(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    cid = _path_id(request)
    limit = _int_param(request, "limit", 1000, 1, 5000) or 1000
    async with rt.engine.connect() as conn:
        if (await conn.execute(select(customers.c.id).where(customers.c.id == cid))).first() is None:
            raise ApiError(404, "not_found", f"no customer with id {cid}")
        rows = await customer_timeline(conn, cid, limit=limit)
    keys = ("id", "conversation_id", "message_id", "kind", "channel", "actor", "payload", "created_at")
    return ok({"customer_id": cid, "data": [{k: r[k] for k in keys} for r in rows]})


# ------------------------------------------------------------------------------------------------ articles
def _kb_table() -> Any:
    from storage.models import Base

    return Base.metadata.tables.get("kb_articles")


def _article(row: Any, full: bool) -> dict[str, Any]:
    keys = ["id", "external_id", "title", "answer", "category", "language", "tags", "published", "version",
            "helpful", "unhelpful", "created_at", "updated_at"]
    if full:
        keys += ["body", "questions"]
    return {k: row[k] for k in keys}


@require_scope("articles:read")
async def list_articles(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    limit, offset = _page(request)
    table = _kb_table()
    if table is None:
        return ok({"data": [], "limit": limit, "offset": offset})
    q = select(table)
    for name in ("language", "category"):
        if request.query.get(name):
            q = q.where(table.c[name] == request.query[name])
    term = request.query.get("q", "").strip()
    if term:
        like = f"%{term[:100]}%"
        q = q.where(or_(table.c.title.ilike(like), table.c.body.ilike(like)))
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(table.c.id).limit(limit).offset(offset))).mappings().all()
    return ok({"data": [_article(r, False) for r in rows], "limit": limit, "offset": offset})


@require_scope("articles:read")
async def get_article(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    aid = _path_id(request)
    table = _kb_table()
    row = None
    if table is not None:
        async with rt.engine.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.id == aid))).mappings().first()
    if row is None:
        raise ApiError(404, "not_found", f"no article with id {aid}")
    return ok(_article(row, True))


# ------------------------------------------------------------------------------------------------ agents
def _agent(row: Any, team_names: list[str]) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "email", "name", "role", "max_chats", "presence", "presence_at", "language",
                               "active", "created_at")}
    out["teams"] = team_names
    return out


async def _agent_teams(conn: AsyncConnection) -> dict[int, list[str]]:
    from storage.models import team_members

    rows = (await conn.execute(
        select(team_members.c.agent_id, teams.c.name).join(teams, teams.c.id == team_members.c.team_id)
    )).all()
    out: dict[int, list[str]] = {}
    for agent_id, name in rows:
        out.setdefault(agent_id, []).append(name)
    return out


@require_scope("agents:read")
async def list_agents(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    limit, offset = _page(request)
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(select(agents).order_by(agents.c.id).limit(limit).offset(offset))).mappings().all()
        names = await _agent_teams(conn)
    return ok({"data": [_agent(r, sorted(names.get(r["id"], []))) for r in rows], "limit": limit, "offset": offset})


@require_scope("agents:read")
async def get_agent(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    aid = _path_id(request)
    async with rt.engine.connect() as conn:
        row = await _row_or_404(conn, agents, aid, "agent")
        names = await _agent_teams(conn)
    return ok(_agent(row, sorted(names.get(aid, []))))


# ------------------------------------------------------------------------------------------------ webhooks
async def _subscriptions_changed(rt: Runtime) -> None:
    sender = rt.services.get("webhooks")
    if sender is not None:
        sender.invalidate()
    await rt.events.publish([("webhooks.changed", {})])


def _subscription(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "url", "events", "active", "description", "created_at")}


def _delivery(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "subscription_id", "event", "payload", "status", "attempts", "next_attempt_at",
                                "last_status_code", "last_error", "log", "created_at", "delivered_at")}


def _check_subscription(data: dict[str, Any], partial: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    url = _opt(data, "url", str, required=not partial)
    if url is not None:
        if not url.startswith(("http://", "https://")) or len(url) > 2000:
            raise ApiError(422, "invalid_body", "url must be an http(s) URL")
        values["url"] = url
    events = _opt(data, "events", list, required=not partial)
    if events is not None:
        if not events or not all(e in WEBHOOK_EVENTS for e in events):
            raise ApiError(422, "invalid_body", f"events must be a non-empty list of {', '.join(WEBHOOK_EVENTS)}")
        values["events"] = sorted(set(events))
    secret = _opt(data, "secret", str)
    if secret is not None:
        if not 16 <= len(secret) <= 200:
            raise ApiError(422, "invalid_body", "secret must be 16–200 characters")
        values["secret"] = secret
    active = _opt(data, "active", bool)
    if active is not None:
        values["active"] = active
    desc = _opt(data, "description", str)
    if desc is not None:
        values["description"] = desc[:300]
    return values


@require_scope("webhooks:read")
async def list_webhooks(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(select(webhook_subscriptions).order_by(webhook_subscriptions.c.id))).mappings().all()
    return ok({"data": [_subscription(r) for r in rows]})


@require_scope("webhooks:write")
async def create_webhook(request: web.Request) -> web.Response:
    import secrets as _secrets

    rt = get_runtime(request)
    values = _check_subscription(await _body(request), partial=False)
    values.setdefault("secret", _secrets.token_urlsafe(32))
    values.setdefault("active", True)
    values.setdefault("description", None)
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        sid = (await conn.execute(webhook_subscriptions.insert().returning(webhook_subscriptions.c.id),
                                  {**values, "created_at": now})).scalar_one()
        await _audit(conn, request, "webhook.create", "webhook", sid, None,
                     {"url": values["url"], "events": values["events"]}, now)
        row = (await conn.execute(select(webhook_subscriptions).where(webhook_subscriptions.c.id == sid))
               ).mappings().one()
    await _subscriptions_changed(rt)
    return ok({**_subscription(row), "secret": values["secret"]}, status=201)


async def _load_subscription(conn: AsyncConnection, sid: int) -> Any:
    return await _row_or_404(conn, webhook_subscriptions, sid, "webhook")


@require_scope("webhooks:read")
async def get_webhook(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    async with rt.engine.connect() as conn:
        row = await _load_subscription(conn, _path_id(request))
    return ok(_subscription(row))


@require_scope("webhooks:write")
async def patch_webhook(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    sid = _path_id(request)
    values = _check_subscription(await _body(request), partial=True)
    if not values:
        raise ApiError(422, "invalid_body", "nothing to change: give url, events, secret, active or description")
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        before = await _load_subscription(conn, sid)
        await conn.execute(update(webhook_subscriptions).where(webhook_subscriptions.c.id == sid).values(**values))
        await _audit(conn, request, "webhook.update", "webhook", sid, _subscription(before),
                     {k: v for k, v in values.items() if k != "secret"}, now)
        row = await _load_subscription(conn, sid)
    await _subscriptions_changed(rt)
    return ok(_subscription(row))


@require_scope("webhooks:write")
async def delete_webhook(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    sid = _path_id(request)
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        before = await _load_subscription(conn, sid)
        await conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.subscription_id == sid))
        await conn.execute(delete(webhook_subscriptions).where(webhook_subscriptions.c.id == sid))
        await _audit(conn, request, "webhook.delete", "webhook", sid, _subscription(before), None, now)
    await _subscriptions_changed(rt)
    return web.Response(status=204)


@require_scope("webhooks:read")
async def list_deliveries(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    sid = _path_id(request)
    limit, offset = _page(request)
    q = select(webhook_deliveries).where(webhook_deliveries.c.subscription_id == sid)
    status = request.query.get("status")
    if status:
        if status not in {"pending", "delivering", "delivered", "failed"}:
            raise ApiError(422, "invalid_parameter", "status must be pending, delivering, delivered or failed")
        q = q.where(webhook_deliveries.c.status == status)
    async with rt.engine.connect() as conn:
        await _load_subscription(conn, sid)
        rows = (await conn.execute(q.order_by(webhook_deliveries.c.id.desc()).limit(limit).offset(offset))
                ).mappings().all()
    return ok({"data": [_delivery(r) for r in rows], "limit": limit, "offset": offset})


@require_scope("webhooks:write")
async def retry_delivery(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    sid, did = _path_id(request), _path_id(request, "delivery_id")
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        row = (await conn.execute(select(webhook_deliveries).where(
            webhook_deliveries.c.id == did, webhook_deliveries.c.subscription_id == sid))).mappings().first()
        if row is None:
            raise ApiError(404, "not_found", f"no delivery {did} for webhook {sid}")
        await conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.id == did)
                           .values(status="pending", next_attempt_at=now, locked_until=None))
        await _audit(conn, request, "webhook.redeliver", "webhook_delivery", did, None, None, now)
        row = (await conn.execute(select(webhook_deliveries).where(webhook_deliveries.c.id == did))).mappings().one()
    nudge = rt.services.get("webhooks_nudge")
    if nudge:
        nudge()
    return ok(_delivery(row), status=202)


# ------------------------------------------------------------------------------------------------ tokens
def _token(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "name", "prefix", "scopes", "created_by", "created_at", "last_used_at",
                                "revoked_at")}


@require_scope("admin")
async def list_tokens(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(select(api_tokens).order_by(api_tokens.c.id))).mappings().all()
    return ok({"data": [_token(r) for r in rows]})


@require_scope("admin")
async def create_token_route(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    data = await _body(request)
    name = _opt(data, "name", str, required=True)
    scopes = _opt(data, "scopes", list, required=True)
    if not name.strip() or len(name) > 200 or not all(isinstance(s, str) for s in scopes):
        raise ApiError(422, "invalid_body", "name must be 1–200 characters and scopes a list of strings")
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        try:
            tid, plain = await create_token(conn, name.strip(), scopes, now, created_by=request[PRINCIPAL].actor)
        except InvalidScope as exc:
            raise ApiError(422, "invalid_body", str(exc)) from exc
        await _audit(conn, request, "token.create", "api_token", tid, None, {"name": name, "scopes": scopes}, now)
        row = (await conn.execute(select(api_tokens).where(api_tokens.c.id == tid))).mappings().one()
    return ok({**_token(row), "token": plain}, status=201)


@require_scope("admin")
async def revoke_token_route(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    tid = _path_id(request)
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        if (await conn.execute(select(api_tokens.c.id).where(api_tokens.c.id == tid))).first() is None:
            raise ApiError(404, "not_found", f"no token with id {tid}")
        await revoke_token(conn, tid, now)
        await _audit(conn, request, "token.revoke", "api_token", tid, None, None, now)
    return web.Response(status=204)


@require_scope("admin")
async def list_audit(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    limit, offset = _page(request)
    async with rt.engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one()
        rows = (await conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit).offset(offset))
                ).mappings().all()
    keys = ("id", "actor", "action", "object_type", "object_id", "before", "after", "ip", "created_at")
    return ok({"data": [{k: r[k] for k in keys} for r in rows], "total": total, "limit": limit, "offset": offset})


async def openapi(request: web.Request) -> web.Response:
    extra = get_runtime(request).services.get("openapi") or {}
    return web.json_response(build_document(str(request.url.origin()), extra.get("paths"), extra.get("schemas")))


# (method, path, handler) — the OpenAPI document is checked against this table by the tests.
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/conversations", list_conversations),
    ("GET", "/api/v1/conversations/{id}", get_conversation),
    ("PATCH", "/api/v1/conversations/{id}", patch_conversation),
    ("GET", "/api/v1/conversations/{id}/messages", list_messages),
    ("POST", "/api/v1/conversations/{id}/messages", send_message),
    ("GET", "/api/v1/customers", list_customers),
    ("GET", "/api/v1/customers/{id}", get_customer),
    ("PATCH", "/api/v1/customers/{id}", patch_customer),
    ("GET", "/api/v1/customers/{id}/timeline", get_timeline),
    ("GET", "/api/v1/articles", list_articles),
    ("GET", "/api/v1/articles/{id}", get_article),
    ("GET", "/api/v1/agents", list_agents),
    ("GET", "/api/v1/agents/{id}", get_agent),
    ("GET", "/api/v1/webhooks", list_webhooks),
    ("POST", "/api/v1/webhooks", create_webhook),
    ("GET", "/api/v1/webhooks/{id}", get_webhook),
    ("PATCH", "/api/v1/webhooks/{id}", patch_webhook),
    ("DELETE", "/api/v1/webhooks/{id}", delete_webhook),
    ("GET", "/api/v1/webhooks/{id}/deliveries", list_deliveries),
    ("POST", "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry", retry_delivery),
    ("GET", "/api/v1/tokens", list_tokens),
    ("POST", "/api/v1/tokens", create_token_route),
    ("DELETE", "/api/v1/tokens/{id}", revoke_token_route),
    ("GET", "/api/v1/audit", list_audit),
]


def setup(rt: Runtime) -> None:
    token_auth(rt)
    rt.pipeline.appliers["api.assign"] = _apply_assign
    rt.pipeline.appliers["api.audit"] = _apply_audit
    rt.app.middlewares.append(api_errors)
    rt.app.router.add_get("/api/v1/openapi.json", openapi)
    for method, path, handler in ROUTES:
        rt.app.router.add_route(method, path, handler)


__all__ = ["ROUTES", "SCOPES", "setup"]
