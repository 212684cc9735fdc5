"""The agent console at /console: server-rendered pages (Jinja2, autoescaped), a WebSocket for live updates.

Pages re-render on the server; the browser's small script (static/console.js) listens on /console/ws and
re-fetches the changed fragment (``?partial=1``), so every customer string passes through Jinja2's escaping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import WSMsgType, web
from sqlalchemy import delete, insert, or_, select, update

from agent_console import auth, dashboard, kb_editor, sla, sla_admin
from agent_console.escalation import csat_question, sla_state
from agent_console.i18n import ui
from agent_console.models import canned_replies, labels, notes
from bot.attachments import AttachmentRejected, AttachmentStore
from bot.clock import aware
from bot.effects import Custom, Send, SetState, Touch, UpdateConversation
from bot.messages import Reply
from bot.outbound import ConversationNotFound, SendRejected, act_on_conversation
from bot.runtime import Runtime, get_runtime
from storage.models import (
    agents,
    audit_log,
    conversations,
    customers,
    identities,
    messages,
    team_members,
    teams,
    touchpoints,
)
from storage.repositories import merge_customers

log = logging.getLogger("loket.console")
HERE = Path(__file__).parent
COOKIE = "loket_console"
PRE_COOKIE = "loket_console_pre"
LIVE_EVENTS = {"message.created", "message.status", "message.for_agent", "conversation.status_changed",
               "conversation.escalated", "conversation.assigned", "conversation.sla_breached", "conversation.csat",
               "conversation.updated", "note.created", "agent.presence", "webchat.typing"}
OPEN_STATES = ("queued", "assigned", "pending_customer")
TIMELINE_ITEMS = 120  # newest timeline items on the conversation page (live refreshes re-render these)
TIMELINE_ALL = 2000  # with ?history=all

env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                         autoescape=jinja2.select_autoescape(default=True, default_for_string=True))


def _fmt_dt(value: Any) -> str:
    if isinstance(value, str):  # ISO times kept in JSON (meta, handover)
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    dt = aware(value)
    return dt.strftime("%Y-%m-%d %H:%M") if dt else ""


env.filters["dt"] = _fmt_dt
env.filters["tojson_pretty"] = lambda v: json.dumps(v, ensure_ascii=False, indent=1, default=str)


class Console:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.sockets: dict[int, dict[web.WebSocketResponse, str]] = defaultdict(dict)  # each open page's presence
        self._presence_locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.store = AttachmentStore(rt.settings.data_dir)
        self.secure_cookies = rt.settings.env.get("LOKET_CONSOLE_SECURE_COOKIES", "auto")
        self.timeline_items = TIMELINE_ITEMS

    # ------------------------------------------------------------ helpers
    def now(self) -> datetime:
        return self.rt.clock.now()

    def ip(self, request: web.Request) -> str:
        return request.remote or "?"

    def render(self, request: web.Request, name: str, status: int = 200, **ctx: Any) -> web.Response:
        sess = ctx.get("me")
        lang = (sess or {}).get("language") or request.query.get("lang") or "id"
        body = env.get_template(name).render(
            _=lambda k: ui(k, lang), lang=lang, now=self.now(), priorities=sla.PRIORITIES,
            csrf=(sess or {}).get("csrf_token", ""), **ctx)
        resp = web.Response(text=body, status=status, content_type="text/html")
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                   "style-src 'self'; script-src 'self'; connect-src 'self'")
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        return resp

    def secure(self, request: web.Request) -> bool:
        if self.secure_cookies == "auto":
            return request.secure or request.headers.get("X-Forwarded-Proto") == "https"
        return self.secure_cookies in {"1", "true", "yes"}

    async def session(self, request: web.Request) -> dict[str, Any] | None:
        async with self.rt.engine.connect() as conn:
            return await auth.load_session(conn, request.cookies.get(COOKIE), self.now())

    async def audit(self, me: dict[str, Any] | None, action: str, request: web.Request, **kw: Any) -> None:
        async with self.rt.engine.begin() as conn:
            await auth.audit(conn, (me or {}).get("email", "anonymous"), action, self.now(), ip=self.ip(request), **kw)

    async def forbidden(self, request: web.Request, me: dict[str, Any], what: str, obj: Any = None) -> web.Response:
        await self.audit(me, "access_denied", request, object_type=what, object_id=obj,
                         after={"path": request.path, "role": me["role"]})
        return self.render(request, "error.html", status=403, me=me, message=ui("forbidden", me.get("language")))

    async def form(self, request: web.Request, me: dict[str, Any]) -> Any:
        """The POSTed form after the CSRF check (raises 403)."""
        data = await request.post()
        token = data.get("_csrf") or request.headers.get("X-CSRF-Token")
        if not auth.same(str(token or ""), me["csrf_token"]):
            await self.audit(me, "csrf_rejected", request, after={"path": request.path})
            raise web.HTTPForbidden(text="CSRF token missing or invalid")
        return data

    async def agent_team_ids(self, agent_id: int) -> set[int]:
        async with self.rt.engine.connect() as conn:
            return set((await conn.execute(select(team_members.c.team_id)
                                           .where(team_members.c.agent_id == agent_id))).scalars().all())

    async def can_open(self, me: dict[str, Any], conv: dict[str, Any]) -> bool:
        if auth.role_at_least(me["role"], "supervisor") or conv["assignee_id"] == me["agent_id"]:
            return True
        if conv["team_id"] is None:
            return conv["assignee_id"] is None
        return conv["team_id"] in await self.agent_team_ids(me["agent_id"])

    async def load_conv(self, request: web.Request, me: dict[str, Any]) -> dict[str, Any] | web.Response:
        cid = int(request.match_info["cid"])
        async with self.rt.engine.connect() as conn:
            row = (await conn.execute(select(conversations).where(conversations.c.id == cid))).mappings().first()
        if row is None:
            raise web.HTTPNotFound()
        conv = dict(row)
        if not await self.can_open(me, conv):
            return await self.forbidden(request, me, "conversation", cid)
        return conv

    async def publish(self, name: str, payload: dict[str, Any]) -> None:
        await self.rt.events.publish([(name, payload)])

    # ------------------------------------------------------------ auth pages
    async def login_page(self, request: web.Request) -> web.Response:
        pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(24)
        resp = self.render(request, "login.html", pre=pre, error=request.query.get("error"))
        resp.set_cookie(PRE_COOKIE, pre, httponly=True, samesite="Lax", secure=self.secure(request), path="/console")
        return resp

    async def login(self, request: web.Request) -> web.Response:
        data = await request.post()
        if not auth.same(str(data.get("_csrf") or ""), request.cookies.get(PRE_COOKIE)):
            raise web.HTTPForbidden(text="CSRF token missing or invalid")
        email = str(data.get("email") or "").strip().lower()
        password = str(data.get("password") or "")
        code = str(data.get("totp") or "")
        ip, now = self.ip(request), self.now()
        async with self.rt.engine.begin() as conn:
            if await auth.throttled(conn, email, ip, now):
                await auth.audit(conn, email or "anonymous", "login_locked", now, ip=ip)
                return self.render(request, "login.html", status=429, pre=request.cookies.get(PRE_COOKIE),
                                   error="locked")
            agent = (await conn.execute(select(agents).where(agents.c.email == email))).mappings().first()
            ok = auth.verify_password(agent["password_hash"] if agent else None, password) and bool(
                agent and agent["active"])
            if ok and agent and agent["totp_secret"]:
                ok = auth.verify_totp(agent["totp_secret"], code, now)
            await auth.record_attempt(conn, email, ip, ok, now)
            if not ok or agent is None:
                await auth.audit(conn, email or "anonymous", "login_failed", now, ip=ip)
                return self.render(request, "login.html", status=401, pre=request.cookies.get(PRE_COOKIE),
                                   error="bad_login")
            token, _ = await auth.create_session(conn, agent["id"], ip, request.headers.get("User-Agent", ""), now)
            await auth.audit(conn, email, "login", now, ip=ip, object_type="agent", object_id=agent["id"])
        resp = web.HTTPSeeOther("/console")
        resp.set_cookie(COOKIE, token, httponly=True, samesite="Lax", secure=self.secure(request), path="/console",
                        max_age=int(auth.SESSION_TTL.total_seconds()))
        resp.del_cookie(PRE_COOKIE, path="/console")
        raise resp

    async def logout(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        await self.form(request, me)
        async with self.rt.engine.begin() as conn:
            await auth.end_session(conn, request.cookies.get(COOKIE, ""))
            await auth.audit(conn, me["email"], "logout", self.now(), ip=self.ip(request))
        resp = web.HTTPSeeOther("/console/login")
        resp.del_cookie(COOKIE, path="/console")
        raise resp

    # ------------------------------------------------------------ inbox
    async def inbox_rows(self, me: dict[str, Any], q: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
        view = q.get("view", "mine")
        is_sup = auth.role_at_least(me["role"], "supervisor")
        my_teams = await self.agent_team_ids(me["agent_id"])
        stmt = (select(conversations, customers.c.display_name.label("customer_name"))
                .join(customers, customers.c.id == conversations.c.customer_id))
        status = q.get("status") or "open"
        if status == "open":
            stmt = stmt.where(conversations.c.state.in_(OPEN_STATES))
        elif status != "any":
            stmt = stmt.where(conversations.c.state == status)
        for key, col in (("channel", conversations.c.channel), ("priority", conversations.c.priority)):
            if q.get(key):
                stmt = stmt.where(col == q[key])
        visible = or_(conversations.c.assignee_id == me["agent_id"], conversations.c.team_id.in_(my_teams or {-1}),
                      (conversations.c.team_id.is_(None)) & (conversations.c.assignee_id.is_(None)))
        async with self.rt.engine.connect() as conn:
            base = [dict(r) for r in (await conn.execute(
                stmt.order_by(conversations.c.updated_at.desc()).limit(500))).mappings().all()]
            if not is_sup:
                allowed = [dict(r) for r in (await conn.execute(
                    stmt.where(visible).order_by(conversations.c.updated_at.desc()).limit(500))).mappings().all()]
            else:
                allowed = base
        if q.get("label"):
            allowed = [r for r in allowed if q["label"] in (r["labels"] or [])]
        views = {
            "mine": lambda r: r["assignee_id"] == me["agent_id"],
            "unassigned": lambda r: r["assignee_id"] is None,
            "teams": lambda r: r["team_id"] in my_teams,
            "all": lambda r: True,
        }
        counts = {k: sum(1 for r in allowed if f(r)) for k, f in views.items()}
        now = self.now()
        rows = [r for r in allowed if views.get(view, views["mine"])(r)]
        for r in rows:
            r["sla"] = sla_state(r, now)
        counts["breached"] = sum(1 for r in allowed if sla_state(r, now) == "breached")
        return rows, counts

    async def inbox(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        rows, counts = await self.inbox_rows(me, request.query)
        tpl = "inbox_list.html" if request.query.get("partial") else "inbox.html"
        return self.render(request, tpl, me=me, rows=rows, counts=counts, q=request.query,
                           view=request.query.get("view", "mine"))

    async def counts(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        _, counts = await self.inbox_rows(me, request.query)
        return web.json_response(counts)

    # ------------------------------------------------------------ conversation
    async def timeline(self, conv: dict[str, Any], limit: int = 120) -> tuple[list[dict[str, Any]], bool]:
        """The customer's whole story across channels: messages and the touchpoints that are not messages, newest
        ``limit`` items (and whether there are older ones). Delivery touchpoints of a shown message are left out:
        the message shows its own delivery status and error."""
        cust = conv["customer_id"]
        async with self.rt.engine.connect() as conn:
            msgs = (await conn.execute(select(messages).where(messages.c.customer_id == cust)
                                       .order_by(messages.c.id.desc()).limit(limit + 1))).mappings().all()
            tps = (await conn.execute(select(touchpoints).where(
                touchpoints.c.customer_id == cust,
                touchpoints.c.kind.notin_(("message_in", "message_out", "delivery"))
                | ((touchpoints.c.kind == "delivery") & touchpoints.c.message_id.is_(None)))
                .order_by(touchpoints.c.id.desc()).limit(limit + 1))).mappings().all()
            nts = (await conn.execute(select(notes, agents.c.name.label("agent_name"))
                                      .outerjoin(agents, agents.c.id == notes.c.agent_id)
                                      .where(notes.c.conversation_id == conv["id"])
                                      .order_by(notes.c.id.desc()).limit(limit + 1))).mappings().all()
        items = [{"type": "message", "at": aware(m["created_at"]), **dict(m)} for m in msgs]
        items += [{"type": "event", "at": aware(t["created_at"]), **dict(t)} for t in tps]
        items += [{"type": "note", "at": aware(n["created_at"]), **dict(n)} for n in nts]
        items.sort(key=lambda i: (i["at"], i["type"] != "message", i["id"]))
        return items[-limit:], len(items) > limit

    async def conversation(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        conv = await self.load_conv(request, me)
        if isinstance(conv, web.Response):
            return conv
        history = request.query.get("history") == "all"
        items, older = await self.timeline(conv, TIMELINE_ALL if history else self.timeline_items)
        if request.query.get("partial"):
            return self.render(request, "timeline.html", me=me, conv=conv, items=items, older=older)
        async with self.rt.engine.connect() as conn:
            cust = (await conn.execute(select(customers).where(customers.c.id == conv["customer_id"]))).mappings().one()
            ident = (await conn.execute(select(identities).where(identities.c.id == conv["identity_id"]))
                     ).mappings().one()
            agent_rows = (await conn.execute(select(agents).where(agents.c.active.is_(True)))).mappings().all()
            team_rows = (await conn.execute(select(teams))).mappings().all()
            canned = (await conn.execute(select(canned_replies).order_by(canned_replies.c.shortcut))).mappings().all()
            label_rows = (await conn.execute(select(labels).order_by(labels.c.name))).mappings().all()
        if conv["channel"] == "webchat":  # read state: the agent has seen the customer's messages
            await self.publish("agent.read", {"channel": "webchat", "address": ident["address"],
                                              "conversation_id": conv["id"], "agent_id": me["agent_id"]})
        variables = {"customer.name": cust["display_name"] or "", "agent.name": me["name"],
                     "conversation.id": str(conv["id"])}
        canned_filled = [{"shortcut": c["shortcut"], "body": fill(c["body"], variables)} for c in canned]
        return self.render(request, "conversation.html", me=me, conv=conv, items=items, cust=cust, ident=ident,
                           agents=agent_rows, teams=team_rows, canned=canned_filled, labels=label_rows, older=older,
                           sla=sla_state(conv, self.now()), rejected=request.query.get("rejected"),
                           templates=sorted(self.rt.settings.twilio_templates))

    async def act(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        conv = await self.load_conv(request, me)
        if isinstance(conv, web.Response):
            return conv
        action = request.match_info["action"]
        data = await self.form(request, me)
        cid = conv["id"]
        by = f"agent:{me['agent_id']}"
        effects: list[Any] = []
        back = f"/console/c/{cid}"
        if action == "reply":
            text = str(data.get("text") or "").strip()
            attachment = data.get("file")
            atts: tuple[Any, ...] = ()
            if isinstance(attachment, web.FileField) and attachment.filename:
                try:
                    atts = (self.store.save(attachment.file.read(), attachment.filename, attachment.content_type),)
                except AttachmentRejected as exc:
                    raise web.HTTPSeeOther(back + "?rejected=" + _q(exc.reason)) from None
            purpose = str(data.get("purpose") or "reply")
            if not text and not atts:
                raise web.HTTPSeeOther(back)
            effects = [Send(Reply(text, author="agent", agent_id=me["agent_id"], attachments=atts, purpose=purpose)),
                       Custom("console.first_response", {})]
            if conv["state"] == "queued" or conv["assignee_id"] is None:
                effects = [Custom("console.assign", {"assignee_id": me["agent_id"], "by": by}),
                           SetState("assigned", reason="agent_replied"), *effects]
        elif action == "note":
            body = str(data.get("text") or "").strip()
            if body:
                async with self.rt.engine.begin() as conn:
                    await conn.execute(insert(notes).values(conversation_id=cid, agent_id=me["agent_id"], body=body,
                                                            created_at=self.now()))
                await self.publish("note.created", {"conversation_id": cid})
            raise web.HTTPSeeOther(back)
        elif action == "assign":
            target = str(data.get("target") or "")
            if target == "me":
                target = f"agent:{me['agent_id']}"
            kind, _, ident = target.partition(":")
            if kind == "agent" and ident.isdigit():
                effects = [Custom("console.assign", {"assignee_id": int(ident), "by": by})]
                if conv["state"] in {"queued", "bot", "resolved"}:
                    effects.append(SetState("assigned", reason="assigned_by_agent"))
                if conv["state"] in {"bot", "resolved"}:  # a person takes it from the bot: the SLA clock starts
                    effects.append(UpdateConversation(meta=sla.started(self.now())))
            elif kind == "team" and ident.isdigit():
                effects = [Custom("console.assign", {"team_id": int(ident), "assignee_id": None, "by": by})]
                if conv["state"] != "queued":  # the bot's reasons stay with the conversation
                    effects.append(SetState("queued", reason="transferred",
                                            details={**_bot_handover(conv["handover"]), "transferred_by": me["name"]}))
            else:
                raise web.HTTPBadRequest(text="unknown assignee")
        elif action == "priority":
            prio = str(data.get("priority") or "")
            if prio not in sla.PRIORITIES:
                raise web.HTTPBadRequest(text="unknown priority")
            effects = [UpdateConversation(priority=prio), Emit_("conversation.updated")]
        elif action == "labels":
            wanted = sorted({x.strip() for x in str(data.get("labels") or "").split(",") if x.strip()})
            async with self.rt.engine.begin() as conn:
                await conn.execute(update(conversations).where(conversations.c.id == cid).values(labels=wanted))
            effects = [Touch("labels_changed", {"labels": wanted}, actor=by), Emit_("conversation.updated")]
        elif action == "snooze":
            hours = float(str(data.get("hours") or "4"))
            until = self.now() + timedelta(hours=hours)
            async with self.rt.engine.begin() as conn:
                await conn.execute(update(conversations).where(conversations.c.id == cid).values(snoozed_until=until))
            effects = [SetState("pending_customer", reason="snoozed", details={"until": until.isoformat()}),
                       Touch("snoozed", {"until": until.isoformat()}, actor=by)]
        elif action == "resolve":
            lang = conv["language"] or "id"
            done = {**sla.ended(conv["meta"], self.now()), "failures": None}
            effects = [Custom("console.close_sla"), SetState("resolved", reason="agent_resolved"),
                       Touch("resolved", {}, actor=by)]
            if str(data.get("csat") or "1") == "1":
                effects += [UpdateConversation(meta={**done, "csat": {"stage": "score"}}), Send(csat_question(lang))]
            else:
                effects.append(UpdateConversation(meta=done))
        elif action == "reopen":
            effects = [SetState("assigned", reason="reopened"),
                       Custom("console.assign", {"assignee_id": me["agent_id"], "by": by}),
                       UpdateConversation(meta=sla.started(self.now()))]
        elif action == "handback":
            effects = [Custom("console.close_sla"), SetState("bot", reason="handed_back"),
                       Touch("handed_back", {}, actor=by),
                       UpdateConversation(meta={**sla.ended(conv["meta"], self.now()), "failures": None})]
        else:
            raise web.HTTPNotFound()
        try:
            await act_on_conversation(self.rt, cid, effects)
        except SendRejected as exc:
            await self.audit(me, f"conversation.{action}.rejected", request, object_type="conversation",
                             object_id=cid, after={"reason": exc.reason})
            raise web.HTTPSeeOther(back + "?rejected=" + _q(exc.reason)) from None
        except ConversationNotFound:
            raise web.HTTPNotFound() from None
        await self.audit(me, f"conversation.{action}", request, object_type="conversation", object_id=cid,
                         before={"state": conv["state"], "assignee_id": conv["assignee_id"],
                                 "priority": conv["priority"]},
                         after={k: str(v)[:200] for k, v in data.items() if k not in {"_csrf", "file"}})
        raise web.HTTPSeeOther(back)

    async def typing(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        conv = await self.load_conv(request, me)
        if isinstance(conv, web.Response):
            return conv
        await self.form(request, me)
        if conv["channel"] == "webchat":
            async with self.rt.engine.connect() as conn:
                addr = (await conn.execute(select(identities.c.address)
                                           .where(identities.c.id == conv["identity_id"]))).scalar_one()
            await self.publish("agent.typing", {"channel": "webchat", "address": addr, "conversation_id": conv["id"],
                                                "agent_id": me["agent_id"]})
        return web.json_response({"ok": True})

    async def attachment(self, request: web.Request, me: dict[str, Any]) -> web.StreamResponse:
        digest = request.match_info["sha"]
        async with self.rt.engine.connect() as conn:
            rows = (await conn.execute(select(messages.c.conversation_id, messages.c.attachments).where(
                messages.c.attachments.isnot(None)).order_by(messages.c.id.desc()).limit(5000))).all()
        match = None
        for conv_id, atts in rows:
            for a in atts or []:
                if a.get("sha256") == digest:
                    match = (conv_id, a)
                    break
            if match:
                break
        if match is None:
            raise web.HTTPNotFound()
        async with self.rt.engine.connect() as conn:
            conv = dict((await conn.execute(select(conversations).where(conversations.c.id == match[0])))
                        .mappings().one())
        if not await self.can_open(me, conv):
            return await self.forbidden(request, me, "attachment", digest)
        try:
            path = self.store.path_for(digest)
        except ValueError:
            raise web.HTTPNotFound() from None
        if not path.exists():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{_safe_name(match[1].get("filename", "file"))}"',
            "X-Content-Type-Options": "nosniff"})

    # ------------------------------------------------------------ customer
    async def customer(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        cust_id = int(request.match_info["cust"])
        async with self.rt.engine.connect() as conn:
            cust = (await conn.execute(select(customers).where(customers.c.id == cust_id))).mappings().first()
            if cust is None:
                raise web.HTTPNotFound()
            idents = (await conn.execute(select(identities).where(identities.c.customer_id == cust_id))
                      ).mappings().all()
            convs = [dict(r) for r in (await conn.execute(select(conversations).where(
                conversations.c.customer_id == cust_id).order_by(conversations.c.id.desc()))).mappings().all()]
        if not auth.role_at_least(me["role"], "supervisor"):
            allowed = [c for c in convs if await self.can_open(me, c)]
            if not allowed:
                return await self.forbidden(request, me, "customer", cust_id)
        async with self.rt.engine.connect() as conn:
            tps = (await conn.execute(select(touchpoints).where(touchpoints.c.customer_id == cust_id)
                                      .order_by(touchpoints.c.id.desc()).limit(200))).mappings().all()
        return self.render(request, "customer.html", me=me, cust=cust, idents=idents, convs=convs, tps=tps)

    async def customer_action(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        cust_id = int(request.match_info["cust"])
        action = request.match_info["action"]
        if not auth.role_at_least(me["role"], "supervisor"):
            return await self.forbidden(request, me, f"customer.{action}", cust_id)
        data = await self.form(request, me)
        now = self.now()
        async with self.rt.engine.begin() as conn:
            if action == "merge":
                source = int(str(data.get("source_id") or "0"))
                if source <= 0 or source == cust_id:
                    raise web.HTTPBadRequest(text="choose another customer")
                await merge_customers(conn, source_id=source, target_id=cust_id, now=now, actor=me["email"],
                                      reason="agent_merge")
                await auth.audit(conn, me["email"], "customer.merge", now, object_type="customer", object_id=cust_id,
                                 after={"source_id": source}, ip=self.ip(request))
            elif action == "erase":
                await erase_customer(conn, cust_id)
                await auth.audit(conn, me["email"], "customer.erase", now, object_type="customer",
                                 object_id=cust_id, ip=self.ip(request), after={"law": "GDPR / UU PDP"})
            elif action == "tags":
                tags = sorted({x.strip() for x in str(data.get("tags") or "").split(",") if x.strip()})
                await conn.execute(update(customers).where(customers.c.id == cust_id).values(tags=tags))
                await auth.audit(conn, me["email"], "customer.tags", now, object_type="customer", object_id=cust_id,
                                 after={"tags": tags}, ip=self.ip(request))
            else:
                raise web.HTTPNotFound()
        raise web.HTTPSeeOther(f"/console/customers/{cust_id}")

    async def export(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        cust_id = int(request.match_info["cust"])
        if not auth.role_at_least(me["role"], "supervisor"):
            return await self.forbidden(request, me, "customer.export", cust_id)
        out: dict[str, Any] = {}
        async with self.rt.engine.connect() as conn:
            for key, table in (("customer", customers), ("identities", identities), ("conversations", conversations),
                               ("messages", messages), ("touchpoints", touchpoints)):
                col = table.c.id if key == "customer" else table.c.customer_id
                out[key] = [dict(r) for r in (await conn.execute(select(table).where(col == cust_id))).mappings()]
        await self.audit(me, "customer.export", request, object_type="customer", object_id=cust_id)
        return web.Response(text=json.dumps(out, default=str, ensure_ascii=False, indent=1),
                            content_type="application/json",
                            headers={"Content-Disposition": f'attachment; filename="customer-{cust_id}.json"'})

    # ------------------------------------------------------------ dashboard
    async def dashboard(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        if not auth.role_at_least(me["role"], "supervisor"):
            return await self.forbidden(request, me, "dashboard")
        now = self.now()
        since = now - timedelta(days=int(request.query.get("days", "30")))
        async with self.rt.engine.connect() as conn:
            fig = await dashboard.read(conn, since, now)
        return self.render(request, "dashboard.html", me=me, stats=fig.stats, charts=dashboard.charts(fig),
                           appts=fig.appointments)

    # ------------------------------------------------------------ admin
    async def canned_page(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        if not auth.role_at_least(me["role"], "supervisor"):
            return await self.forbidden(request, me, "canned")
        if request.method == "POST":
            data = await self.form(request, me)
            async with self.rt.engine.begin() as conn:
                shortcut = str(data.get("shortcut") or "").strip().lstrip("/")[:60]
                if data.get("delete"):
                    await conn.execute(delete(canned_replies).where(canned_replies.c.id == int(str(data["delete"]))))
                elif not shortcut:
                    raise web.HTTPBadRequest(text="a canned reply needs a shortcut, e.g. halo (typed as /halo)")
                elif (await conn.execute(select(canned_replies.c.id)
                                         .where(canned_replies.c.shortcut == shortcut))).first():
                    # saving a shortcut that exists replaces its text: that is how a canned reply is edited
                    await conn.execute(update(canned_replies).where(canned_replies.c.shortcut == shortcut)
                                       .values(body=str(data.get("body") or "")))
                else:
                    await conn.execute(insert(canned_replies).values(
                        shortcut=shortcut, body=str(data.get("body") or ""),
                        created_by=me["agent_id"], created_at=self.now()))
                await auth.audit(conn, me["email"], "canned.change", self.now(), ip=self.ip(request),
                                 after={k: str(v)[:200] for k, v in data.items() if k != "_csrf"})
            raise web.HTTPSeeOther("/console/admin/canned")
        async with self.rt.engine.connect() as conn:
            rows = (await conn.execute(select(canned_replies).order_by(canned_replies.c.shortcut))).mappings().all()
        return self.render(request, "canned.html", me=me, rows=rows)

    async def admin_page(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        if not auth.role_at_least(me["role"], "admin"):
            return await self.forbidden(request, me, "admin")
        now = self.now()
        if request.method == "POST":
            data = await self.form(request, me)
            async with self.rt.engine.begin() as conn:
                kind = data.get("kind")
                if kind == "agent":
                    aid = (await conn.execute(insert(agents).values(
                        email=str(data["email"]).strip().lower(), name=str(data["name"]),
                        password_hash=auth.hash_password(str(data["password"])),
                        role=str(data.get("role") or "agent") if data.get("role") in auth.ROLES else "agent",
                        max_chats=int(str(data.get("max_chats") or "5")), presence="offline", language="id",
                        active=True, created_at=now).returning(agents.c.id))).scalar_one()
                    if str(data.get("team_id") or "").isdigit():
                        await conn.execute(insert(team_members).values(team_id=int(str(data["team_id"])), agent_id=aid))
                elif kind == "team":
                    hours = json.loads(str(data.get("business_hours") or "{}") or "{}")
                    await conn.execute(insert(teams).values(name=str(data["name"]), business_hours=hours,
                                                            settings={}, created_at=now))
                elif kind == "label":
                    await conn.execute(insert(labels).values(name=str(data["name"]), color="#5b6ee1"))
                await auth.audit(conn, me["email"], f"admin.{kind}.create", now, ip=self.ip(request),
                                 after={k: str(v)[:200] for k, v in data.items() if k not in {"_csrf", "password"}})
            raise web.HTTPSeeOther("/console/admin")
        async with self.rt.engine.connect() as conn:
            agent_rows = (await conn.execute(select(agents).order_by(agents.c.name))).mappings().all()
            team_rows = (await conn.execute(select(teams).order_by(teams.c.name))).mappings().all()
            label_rows = (await conn.execute(select(labels).order_by(labels.c.name))).mappings().all()
            audits = (await conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(50))).mappings().all()
        return self.render(request, "admin.html", me=me, agents=agent_rows, teams=team_rows, labels=label_rows,
                           audits=audits)

    # ------------------------------------------------------------ live
    async def ws(self, request: web.Request, me: dict[str, Any]) -> web.WebSocketResponse:
        if not auth.same(request.query.get("csrf"), me["csrf_token"]):
            await self.audit(me, "csrf_rejected", request, after={"path": request.path})
            raise web.HTTPForbidden(text="CSRF token missing or invalid")
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        aid = me["agent_id"]
        self.sockets[aid][ws] = "online"
        await self.store_presence(aid)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    continue
                if frame.get("type") in {"ping", "presence"}:
                    state = frame.get("presence", "online")
                    self.sockets[aid][ws] = state if state in {"online", "away"} else "online"
                    await self.store_presence(aid)
        finally:
            self.sockets[aid].pop(ws, None)
            try:
                await self.store_presence(aid)
            except Exception:  # noqa: BLE001 - shutting down: the presence timeout will clear it
                log.debug("could not store the presence of agent %s", aid)
        return ws

    async def store_presence(self, agent_id: int) -> None:
        """Store and announce what the agent's open pages say together (online if any page is in front).

        One write at a time per agent, each computed from the pages open when it is its turn: changing pages
        closes a socket and opens another at the same moment, and a stale "offline" committed after the new
        page's "online" would leave an agent with an open page offline (no auto-assignment) until its next ping."""
        async with self._presence_locks[agent_id]:
            presence = auth.combined_presence(self.sockets[agent_id].values())
            async with self.rt.engine.begin() as conn:
                await auth.touch_presence(conn, agent_id, presence, self.now())
            await self.publish("agent.presence", {"agent_id": agent_id, "presence": presence})

    async def on_event(self, name: str, payload: dict[str, Any]) -> None:
        if name not in LIVE_EVENTS or not self.sockets:
            return
        frame = {"type": "event", "name": name, "conversation_id": payload.get("conversation_id"),
                 "agent_id": payload.get("agent_id") or payload.get("assignee_id")}
        for socks in list(self.sockets.values()):
            for ws in list(socks):
                if not ws.closed:
                    try:
                        await ws.send_json(frame)
                    except (ConnectionError, RuntimeError):
                        pass


def Emit_(name: str) -> Any:  # noqa: N802 - reads like the effect it builds
    from bot.effects import Emit

    return Emit(name, {})


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:300])


def _bot_handover(handover: dict[str, Any] | None) -> dict[str, Any]:
    """The bot's original handover reasons, kept through transfers between teams."""
    h = dict(handover or {})
    if h.get("reason") == "transferred":
        return {k: v for k, v in h.items() if k not in {"reason", "team", "transferred_by"}}
    return {("bot_reason" if k == "reason" else k): v for k, v in h.items() if k != "team" and v is not None}


def _safe_name(name: str) -> str:
    return "".join(c for c in name if c.isalnum() or c in "._- ")[:100] or "file"


def fill(body: str, variables: dict[str, str]) -> str:
    """``{{customer.name}}`` style variables in canned replies."""
    for key, value in variables.items():
        body = body.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
    return body


async def erase_customer(conn: Any, cust_id: int) -> None:
    """Right to erasure: anonymise the person, keep the counts (conversations stay for statistics)."""
    await conn.execute(update(messages).where(messages.c.customer_id == cust_id)
                       .values(body="[erased]", attachments=[], meta={}, choices=[]))
    await conn.execute(update(touchpoints).where(touchpoints.c.customer_id == cust_id).values(payload={}))
    for row in (await conn.execute(select(identities.c.id).where(identities.c.customer_id == cust_id))).all():
        await conn.execute(update(identities).where(identities.c.id == row[0]).values(
            address=f"erased:{row[0]}", display_name=None, meta={}, unreachable=True, unreachable_reason="erased"))
    await conn.execute(update(conversations).where(conversations.c.customer_id == cust_id)
                       .values(csat_comment=None, handover=None, flow=None))
    await conn.execute(update(customers).where(customers.c.id == cust_id).values(
        display_name=None, attributes={"erased": True}, tags=[], opted_out=True))


Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def setup(rt: Runtime) -> None:
    console = Console(rt)
    rt.services["console"] = console
    rt.events.subscribe(console.on_event)

    def authed(fn: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            me = await get_runtime(request).services["console"].session(request)
            if me is None:
                if request.method == "GET" and not request.path.startswith("/console/ws"):
                    raise web.HTTPSeeOther("/console/login")
                raise web.HTTPUnauthorized(text="sign in first")
            return await fn(request, me)
        return handler

    r = rt.app.router
    r.add_get("/console/login", console.login_page)
    r.add_post("/console/login", console.login)
    r.add_post("/console/logout", authed(console.logout))
    r.add_get("/console", authed(console.inbox))
    r.add_get("/console/", authed(console.inbox))
    r.add_get("/console/api/counts", authed(console.counts))
    r.add_get("/console/c/{cid:\\d+}", authed(console.conversation))
    r.add_post("/console/c/{cid:\\d+}/typing", authed(console.typing))
    r.add_post("/console/c/{cid:\\d+}/{action}", authed(console.act))
    r.add_get("/console/attachments/{sha}", authed(console.attachment))
    r.add_get("/console/customers/{cust:\\d+}", authed(console.customer))
    r.add_get("/console/customers/{cust:\\d+}/export", authed(console.export))
    r.add_post("/console/customers/{cust:\\d+}/{action}", authed(console.customer_action))
    r.add_get("/console/dashboard", authed(console.dashboard))
    r.add_route("*", "/console/admin/canned", authed(console.canned_page))
    r.add_route("*", "/console/admin", authed(console.admin_page))
    r.add_get("/console/ws", authed(console.ws))
    kb_editor.install(console, authed)
    sla_admin.install(console, authed)
    r.add_static("/console/static", HERE / "static")

    async def close_sockets() -> None:
        for socks in list(console.sockets.values()):
            for ws in list(socks):
                await ws.close()

    rt.on_shutdown(close_sockets)
