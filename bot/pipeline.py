"""Inbox → router → effects, durably (DESIGN §3).

* ``InboxWriter.submit`` persists an InboundMessage (group commit: concurrent webhooks share one transaction)
  and returns only after commit; a duplicate ``(channel, provider_message_id)`` is reported, not stored.
* ``RouterWorker`` claims pending items, one conversation key at a time in arrival order, routes each, and
  commits the effects together with marking the item done. A crash before commit leaves the item pending.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.clock import Clock, aware
from bot.effects import (
    Custom,
    Decision,
    Effect,
    Emit,
    Send,
    SetFlow,
    SetState,
    Touch,
    UpdateConversation,
    UpdateCustomer,
)
from bot.faults import fault
from bot.messages import InboundMessage, Reply
from bot.router import ConversationView, CustomerView, RouteContext, Router
from bot.texts import detect_language
from storage.db import insert_ignore, is_sqlite
from storage.models import conversations, customers, identities, inbox_items, messages, outbox_items, teams
from storage.repositories import add_touchpoint, buffered_touchpoints, find_or_create_customer

log = logging.getLogger("loket.pipeline")

MAX_ITEM_ATTEMPTS = 5

# Hot-path statements, built once (constructing SQLAlchemy statements per message costs more than running them).
_INSERT_MESSAGE = messages.insert().returning(messages.c.id)
_INSERT_OUTBOX = outbox_items.insert()
_INSERT_CONVERSATION = conversations.insert().returning(conversations.c.id)
_UPDATE_IDENTITY = update(identities).where(identities.c.id == bindparam("pk"))
_UPDATE_CUSTOMER = update(customers).where(customers.c.id == bindparam("pk"))
_UPDATE_CONVERSATION = update(conversations).where(conversations.c.id == bindparam("pk"))
_LAST_CHOICES = (
    select(messages.c.choices)
    .where(messages.c.conversation_id == conversations.c.id, messages.c.direction == "out")
    .order_by(messages.c.id.desc())
    .limit(1)
    .scalar_subquery()
    .label("last_choices")
)
_OPEN_CONVERSATION = (
    select(conversations, _LAST_CHOICES)
    .where(conversations.c.identity_id == bindparam("identity_id"))
    .order_by(conversations.c.id.desc())
    .limit(1)
)


@dataclass
class _Pending:
    msg: InboundMessage
    future: asyncio.Future[bool]


class InboxWriter:
    """Persist-then-ack with group commit."""

    def __init__(self, engine: AsyncEngine, clock: Clock, on_commit: Callable[[], None]) -> None:
        self.engine = engine
        self.clock = clock
        self.on_commit = on_commit
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._insert: Any = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="inbox-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def submit(self, msg: InboundMessage) -> bool:
        """Store the message; True if new, False if it was a duplicate. Returns after commit."""
        if self._task is None:
            return (await self._write([msg]))[0]
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(msg, fut))
        return await fut

    async def _loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while not self._queue.empty() and len(batch) < 500:
                batch.append(self._queue.get_nowait())
            try:
                results = await self._write([p.msg for p in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, res in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(res)

    async def _write(self, batch: list[InboundMessage]) -> list[bool]:
        now = self.clock.now()
        results: list[bool] = []
        async with self.engine.begin() as conn:
            seen: set[tuple[str, str]] = set()
            for msg in batch:
                ident = (msg.channel, msg.provider_message_id)
                if ident in seen:
                    results.append(False)
                    continue
                seen.add(ident)
                if self._insert is None:
                    self._insert = insert_ignore(conn, inbox_items).returning(inbox_items.c.id)
                row = await conn.execute(
                    self._insert,
                    {"channel": msg.channel, "provider_message_id": msg.provider_message_id, "key": msg.key,
                     "payload": msg.to_payload(), "status": "pending", "attempts": 0, "last_error": None,
                     "received_at": now, "processed_at": None},
                )
                results.append(row.first() is not None)
        fault("after_inbox_commit")
        if any(results):
            self.on_commit()
        return results


EffectApplier = Callable[["ApplyContext", Custom], Awaitable[None]]
# A hook returns False when it changed nothing; True or None (unknown) make the pipeline re-read the identity
# and its customer (a hook may have merged two customers).
PreRouteHook = Callable[[AsyncConnection, InboundMessage, dict[str, Any], dict[str, Any], Any], Awaitable[bool | None]]
REFRESH = timedelta(seconds=60)  # last_seen / last_inbound_at are kept to this precision
SendHook = Callable[[AsyncConnection, "ApplyContext", Reply, int], Awaitable[None]]


@dataclass
class ApplyContext:
    conn: AsyncConnection
    now: Any
    customer_id: int
    conversation_id: int
    identity: dict[str, Any]
    channel: str
    message_id: int | None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    route: RouteContext | None = None
    created: list[int] = field(default_factory=list)  # outbound message ids written in this transaction


class Pipeline:
    """Applies routing decisions. Shared by the router worker and by agents/API/scheduler sends."""

    def __init__(self, engine: AsyncEngine, clock: Clock, router: Router, services: dict[str, Any]) -> None:
        self.engine = engine
        self.clock = clock
        self.router = router
        self.services = services
        self.appliers: dict[str, EffectApplier] = {}
        self.pre_route_hooks: list[PreRouteHook] = []
        self.event_sinks: list[Callable[[AsyncConnection, str, dict[str, Any], Any], Awaitable[None]]] = []
        self.reopen_window = timedelta(hours=24)

    # ---------------------------------------------------------------- conversations
    async def open_conversation(
        self, conn: AsyncConnection, identity: dict[str, Any], customer: dict[str, Any], now: Any
    ) -> tuple[dict[str, Any], bool, bool]:
        """The identity's open conversation, a reopened one, or a new one: (row, is_new, reopened)."""
        row = (await conn.execute(_OPEN_CONVERSATION, {"identity_id": identity["id"]})).mappings().first()
        if row is not None and row["state"] != "resolved":
            return {**row}, False, False
        if row is not None and row["resolved_at"] is not None and now - aware(row["resolved_at"]) <= self.reopen_window:
            await conn.execute(
                update(conversations)
                .where(conversations.c.id == row["id"])
                .values(state="bot", resolved_at=None, updated_at=now, flow=None)
            )
            await add_touchpoint(
                conn, customer_id=customer["id"], conversation_id=row["id"], kind="state_changed", now=now,
                channel=identity["channel"], payload={"from": "resolved", "to": "bot", "reason": "customer_returned"},
            )
            reopened = (
                await conn.execute(select(conversations).where(conversations.c.id == row["id"]))
            ).mappings().one()
            return {**reopened, "last_choices": row["last_choices"]}, False, True
        conv_id = (
            await conn.execute(
                _INSERT_CONVERSATION,
                {"customer_id": customer["id"], "identity_id": identity["id"], "channel": identity["channel"],
                 "state": "bot", "language": None, "priority": "normal", "labels": [], "meta": {},
                 "created_at": now, "updated_at": now},
            )
        ).scalar_one()
        await add_touchpoint(
            conn, customer_id=customer["id"], conversation_id=conv_id, kind="conversation_opened", now=now,
            channel=identity["channel"], payload={},
        )
        fresh: dict[str, Any] = {c.name: None for c in conversations.c}
        fresh.update({
            "id": conv_id, "customer_id": customer["id"], "identity_id": identity["id"],
            "channel": identity["channel"], "state": "bot", "flow": None, "language": None, "team_id": None,
            "assignee_id": None, "priority": "normal", "labels": [], "handover": None, "meta": {},
            "last_choices": [], "created_at": now, "updated_at": now,
        })
        return fresh, True, False

    # ---------------------------------------------------------------- inbound
    async def handle_inbound(
        self, conn: AsyncConnection, msg: InboundMessage, events: list[tuple[str, dict[str, Any]]]
    ) -> Decision:
        now = self.clock.now()
        lang_guess = msg.language_hint if msg.language_hint in {"id", "en"} else detect_language(msg.text)
        identity, customer, cust_new = await find_or_create_customer(
            conn, channel=msg.channel, address=msg.address, now=now,
            display_name=msg.display_name, language=lang_guess,
        )
        changed = False
        for hook in self.pre_route_hooks:
            changed = (await hook(conn, msg, identity, customer, self)) is not False or changed
        if changed:  # a hook merged or relinked: read the identity and its customer again
            identity = dict(
                (await conn.execute(select(identities).where(identities.c.id == identity["id"]))).mappings().one()
            )
            customer = dict(
                (await conn.execute(select(customers).where(customers.c.id == identity["customer_id"])))
                .mappings().one()
            )
        last_in = aware(identity["last_inbound_at"])
        if (last_in is None or now - last_in >= REFRESH or identity["unreachable"]
                or (msg.display_name and msg.display_name != identity["display_name"])):
            ident_values: dict[str, Any] = {"last_inbound_at": now, "unreachable": False, "unreachable_reason": None}
            if msg.display_name and msg.display_name != identity["display_name"]:
                ident_values["display_name"] = msg.display_name
            await conn.execute(_UPDATE_IDENTITY, {"pk": identity["id"], **ident_values})
            identity = {**identity, **ident_values}
        last_seen = aware(customer["last_seen_at"])
        name_missing = bool(msg.display_name and not customer["display_name"])
        if not cust_new and (last_seen is None or now - last_seen >= REFRESH or name_missing):
            cust_values: dict[str, Any] = {"last_seen_at": now}
            if name_missing:
                cust_values["display_name"] = msg.display_name
                customer["display_name"] = msg.display_name
            await conn.execute(_UPDATE_CUSTOMER, {"pk": customer["id"], **cust_values})

        conv, conv_new, reopened = await self.open_conversation(conn, identity, customer, now)
        if conv_new and lang_guess and not conv["language"]:
            conv["language"] = lang_guess if cust_new or msg.language_hint else customer["language"]
        in_id = (
            await conn.execute(
                _INSERT_MESSAGE,
                {"conversation_id": conv["id"], "customer_id": customer["id"], "channel": msg.channel,
                 "direction": "in", "author": "customer", "agent_id": None, "body": msg.text, "choices": [],
                 "attachments": [a.to_dict() for a in msg.attachments], "purpose": msg.kind,
                 "channel_message_id": msg.provider_message_id, "status": "received", "error": None,
                 "meta": {"button_payload": msg.button_payload, **msg.meta} if msg.button_payload or msg.meta else {},
                 "created_at": now, "sent_at": None, "delivered_at": None},
            )
        ).scalar_one()
        await add_touchpoint(
            conn, customer_id=customer["id"], conversation_id=conv["id"], message_id=in_id, kind="message_in",
            now=now, channel=msg.channel, actor="customer",
            payload={"text": msg.text[:2000], "kind": msg.kind, "button": msg.button_payload,
                     "attachments": len(msg.attachments)},
        )
        await conn.execute(
            _UPDATE_CONVERSATION, {"pk": conv["id"], "last_message_at": now, "updated_at": now,
                                   "language": conv["language"]}
        )
        events.append((
            "message.created",
            {"message_id": in_id, "conversation_id": conv["id"], "customer_id": customer["id"],
             "direction": "in", "author": "customer", "channel": msg.channel, "text": msg.text[:2000]},
        ))
        ctx = RouteContext(
            last_choices=list(conv.get("last_choices") or []),
            message=msg,
            customer=CustomerView(
                id=customer["id"], display_name=customer["display_name"], language=customer["language"] or "id",
                timezone=customer["timezone"], tags=list(customer["tags"] or []),
                attributes=dict(customer["attributes"] or {}), opted_out=bool(customer["opted_out"]), is_new=cust_new,
            ),
            conversation=ConversationView(
                id=conv["id"], state=conv["state"], channel=conv["channel"], flow=conv["flow"],
                language=conv["language"], team_id=conv["team_id"], assignee_id=conv["assignee_id"],
                priority=conv["priority"], labels=list(conv["labels"] or []), meta=dict(conv["meta"] or {}),
                is_new=conv_new, reopened=reopened,
            ),
            now=now,
            services=self.services,
            identity_meta=dict(identity["meta"] or {}),
        )
        decision = await self.router.route(ctx)
        actx = ApplyContext(conn=conn, now=now, customer_id=customer["id"], conversation_id=conv["id"],
                            identity=identity, channel=msg.channel, message_id=in_id, events=events, route=ctx)
        await self.apply(actx, decision.effects, state_before=conv["state"])
        await self.run_sinks(conn, events, now)
        return decision

    # ---------------------------------------------------------------- effects
    async def apply(self, actx: ApplyContext, effects: list[Effect], state_before: str | None = None) -> None:
        conn, now = actx.conn, actx.now
        state = state_before
        for eff in effects:
            if isinstance(eff, Send):
                await self.send(actx, eff.reply)
            elif isinstance(eff, SetState):
                values: dict[str, Any] = {"state": eff.state, "updated_at": now}
                if eff.state == "queued":
                    values["queued_at"] = now
                    values["assignee_id"] = None
                    values["handover"] = {"reason": eff.reason, "team": eff.team, **eff.details}
                    if eff.team:
                        team_id = (
                            await conn.execute(select(teams.c.id).where(teams.c.name == eff.team))
                        ).scalar_one_or_none()
                        values["team_id"] = team_id
                if eff.state == "resolved":
                    values["resolved_at"] = now
                if eff.state == "bot":
                    values["assignee_id"] = None
                await conn.execute(
                    update(conversations).where(conversations.c.id == actx.conversation_id).values(**values)
                )
                await add_touchpoint(
                    conn, customer_id=actx.customer_id, conversation_id=actx.conversation_id, kind="state_changed",
                    now=now, channel=actx.channel, actor="bot",
                    payload={"from": state, "to": eff.state, "reason": eff.reason, "team": eff.team},
                )
                actx.events.append((
                    "conversation.status_changed",
                    {"conversation_id": actx.conversation_id, "customer_id": actx.customer_id,
                     "from": state, "to": eff.state, "reason": eff.reason},
                ))
                state = eff.state
            elif isinstance(eff, SetFlow):
                await conn.execute(
                    update(conversations).where(conversations.c.id == actx.conversation_id).values(flow=eff.position)
                )
            elif isinstance(eff, Touch):
                await add_touchpoint(
                    conn, customer_id=actx.customer_id, conversation_id=actx.conversation_id,
                    message_id=actx.message_id, kind=eff.kind, now=now, channel=actx.channel, actor=eff.actor,
                    payload=eff.payload,
                )
            elif isinstance(eff, UpdateCustomer):
                await self._update_customer(conn, actx, eff)
            elif isinstance(eff, UpdateConversation):
                await self._update_conversation(conn, actx, eff)
            elif isinstance(eff, Emit):
                actx.events.append((eff.name, {"conversation_id": actx.conversation_id,
                                               "customer_id": actx.customer_id, **eff.payload}))
            elif isinstance(eff, Custom):
                applier = self.appliers.get(eff.kind)
                if applier is None:
                    raise RuntimeError(f"no applier registered for custom effect {eff.kind!r}")
                await applier(actx, eff)
            else:  # pragma: no cover - the Effect union is closed
                raise TypeError(f"unknown effect {eff!r}")

    async def run_sinks(self, conn: AsyncConnection, events: list[tuple[str, dict[str, Any]]], now: Any) -> None:
        """Durable event consumers (outgoing webhooks …) write in the same transaction as the effects."""
        for name, payload in events:
            for sink in self.event_sinks:
                await sink(conn, name, payload, now)

    async def _update_customer(self, conn: AsyncConnection, actx: ApplyContext, eff: UpdateCustomer) -> None:
        cust = (await conn.execute(select(customers).where(customers.c.id == actx.customer_id))).mappings().one()
        values: dict[str, Any] = {}
        if eff.language:
            values["language"] = eff.language
        if eff.display_name:
            values["display_name"] = eff.display_name
        if eff.attributes:
            values["attributes"] = {**(cust["attributes"] or {}), **eff.attributes}
        if eff.add_tags:
            values["tags"] = sorted(set(cust["tags"] or []) | set(eff.add_tags))
        if eff.opted_out is not None:
            values["opted_out"] = eff.opted_out
            values["opted_out_at"] = actx.now if eff.opted_out else None
        if values:
            await conn.execute(update(customers).where(customers.c.id == actx.customer_id).values(**values))
        if eff.language:
            await conn.execute(
                update(conversations).where(conversations.c.id == actx.conversation_id).values(language=eff.language)
            )

    async def _update_conversation(self, conn: AsyncConnection, actx: ApplyContext, eff: UpdateConversation) -> None:
        conv = (
            await conn.execute(select(conversations).where(conversations.c.id == actx.conversation_id))
        ).mappings().one()
        values: dict[str, Any] = {"updated_at": actx.now}
        if eff.priority and eff.priority != conv["priority"]:
            values["priority"] = eff.priority
            await add_touchpoint(
                conn, customer_id=actx.customer_id, conversation_id=actx.conversation_id, kind="priority_changed",
                now=actx.now, channel=actx.channel, payload={"from": conv["priority"], "to": eff.priority},
            )
        if eff.add_labels:
            values["labels"] = sorted(set(conv["labels"] or []) | set(eff.add_labels))
        if eff.language:
            values["language"] = eff.language
        if eff.meta:
            values["meta"] = {**(conv["meta"] or {}), **eff.meta}
        await conn.execute(update(conversations).where(conversations.c.id == actx.conversation_id).values(**values))

    async def send(self, actx: ApplyContext, reply: Reply) -> int:
        """Write an outbound message and its outbox row (same transaction as the decision)."""
        conn, now = actx.conn, actx.now
        msg_id = (
            await conn.execute(
                _INSERT_MESSAGE,
                {"conversation_id": actx.conversation_id, "customer_id": actx.customer_id,
                 "channel": actx.channel, "direction": "out", "author": reply.author, "agent_id": reply.agent_id,
                 "body": reply.text, "choices": [c.to_dict() for c in reply.choices],
                 "attachments": [a.to_dict() for a in reply.attachments], "purpose": reply.purpose,
                 "channel_message_id": None, "status": "queued", "error": None,
                 "meta": {"reply": reply.to_payload()}, "created_at": now, "sent_at": None, "delivered_at": None},
            )
        ).scalar_one()
        await conn.execute(
            _INSERT_OUTBOX,
            {"message_id": msg_id, "channel": actx.channel,
             "key": f"{actx.identity['channel']}:{actx.identity['address']}", "status": "pending", "attempts": 0,
             "next_attempt_at": now, "locked_by": None, "locked_until": None, "last_error": None,
             "provider_message_id": None, "created_at": now, "sent_at": None},
        )
        await add_touchpoint(
            conn, customer_id=actx.customer_id, conversation_id=actx.conversation_id, message_id=msg_id,
            kind="message_out", now=now, channel=actx.channel, actor=reply.author if reply.author != "agent"
            else f"agent:{reply.agent_id}",
            payload={"text": reply.text[:2000], "purpose": reply.purpose,
                     "choices": [c.value for c in reply.choices]},
        )
        actx.events.append((
            "message.created",
            {"message_id": msg_id, "conversation_id": actx.conversation_id, "customer_id": actx.customer_id,
             "direction": "out", "author": reply.author, "channel": actx.channel, "text": reply.text[:2000]},
        ))
        actx.created.append(msg_id)
        return msg_id


class _BatchNeedsSafeMode(Exception):
    pass


class RouterWorker:
    """Claims inbox items and routes them, one conversation key at a time, in arrival order."""

    def __init__(
        self,
        engine: AsyncEngine,
        pipeline: Pipeline,
        publish: Callable[[list[tuple[str, dict[str, Any]]]], Awaitable[None]],
        on_outbox: Callable[[], None],
        batch_size: int = 64,
        poll_interval: float = 0.5,
    ) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.publish = publish
        self.on_outbox = on_outbox
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.wakeup = asyncio.Event()
        self.worker_id = f"{os.uname().nodename}:{os.getpid()}"
        self._stopping = False
        self._safe_next = False
        self.processed = 0
        self.loops = 1

    def nudge(self) -> None:
        self.wakeup.set()

    async def run(self) -> None:
        """Run ``loops`` claim loops; on PostgreSQL several transactions route different conversations at once."""
        if self.loops <= 1:
            await self._run_one()
        else:
            await asyncio.gather(*(self._run_one() for _ in range(self.loops)))

    async def _run_one(self) -> None:
        while not self._stopping:
            try:
                n = await self.process_batch()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broken DB connection must not kill the worker
                log.exception("router worker batch failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if n == 0:
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), timeout=self.poll_interval)
                except TimeoutError:
                    pass

    def stop(self) -> None:
        self._stopping = True
        self.wakeup.set()

    async def _claim(self, conn: AsyncConnection) -> list[dict[str, Any]]:
        q = (
            select(inbox_items.c.id, inbox_items.c.key, inbox_items.c.payload, inbox_items.c.attempts)
            .where(inbox_items.c.status == "pending")
            .order_by(inbox_items.c.id)
            .limit(self.batch_size)
        )
        if is_sqlite(conn):
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]
        rows = [dict(r) for r in (await conn.execute(q.with_for_update(skip_locked=True))).mappings().all()]
        claimed: list[dict[str, Any]] = []
        keys_ok: dict[str, bool] = {}
        for r in rows:
            key = r["key"]
            if key not in keys_ok:
                got = (
                    await conn.execute(text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"), {"k": key})
                ).scalar_one()
                if got:
                    # an earlier item of this key held by another worker: wait for it (order)
                    earlier = (
                        await conn.execute(
                            select(func.count())
                            .select_from(inbox_items)
                            .where(inbox_items.c.key == key, inbox_items.c.status == "pending",
                                   inbox_items.c.id < r["id"])
                        )
                    ).scalar_one()
                    got = earlier == 0
                keys_ok[key] = bool(got)
            elif keys_ok[key]:
                # a later item of a key already claimed in this batch: only if nothing pending lies between
                # (an item in the gap may be row-locked by another worker and skipped by SKIP LOCKED above)
                mine = [c["id"] for c in claimed if c["key"] == key]
                gap = (
                    await conn.execute(
                        select(func.count())
                        .select_from(inbox_items)
                        .where(inbox_items.c.key == key, inbox_items.c.status == "pending",
                               inbox_items.c.id < r["id"], inbox_items.c.id.not_in(mine))
                    )
                ).scalar_one()
                keys_ok[key] = gap == 0
            if keys_ok[key]:
                claimed.append(r)
        return claimed

    async def process_batch(self) -> int:
        """Route a batch of inbox items in one transaction.

        Fast path: no savepoints. If any item raises, the whole transaction is rolled back and the batch is
        routed again in safe mode, where each item runs in its own savepoint so one poisoned message cannot
        hold up the rest (it is retried a few times, then marked ``failed`` for a supervisor to see).
        """
        try:
            return await self._process(safe=self._safe_next)
        except _BatchNeedsSafeMode:
            self._safe_next = True
            return await self._process(safe=True)

    async def _process(self, safe: bool) -> int:
        events: list[tuple[str, dict[str, Any]]] = []
        failures = 0
        sends = 0
        async with self.engine.begin() as conn:
            items = await self._claim(conn)
            if not items:
                self._safe_next = False
                return 0
            done_ids: list[int] = []
            blocked_keys: set[str] = set()
            async with buffered_touchpoints(conn):
                for item in items:
                    if item["key"] in blocked_keys:
                        continue  # an earlier message of this conversation failed: keep the order
                    item_events: list[tuple[str, dict[str, Any]]] = []
                    msg = InboundMessage.from_payload(item["payload"])
                    if not safe:
                        try:
                            decision = await self.pipeline.handle_inbound(conn, msg, item_events)
                        except Exception as exc:
                            raise _BatchNeedsSafeMode from exc
                    else:
                        try:
                            async with conn.begin_nested(), buffered_touchpoints(conn):
                                decision = await self.pipeline.handle_inbound(conn, msg, item_events)
                        except Exception as exc:  # noqa: BLE001 - isolate one poisoned message from the rest
                            log.exception("routing inbox item %s failed", item["id"],
                                          extra={"inbox_item_id": item["id"], "channel": msg.channel})
                            blocked_keys.add(item["key"])
                            failures += 1
                            await self._record_failure(
                                conn, item, "".join(traceback.format_exception_only(exc)).strip()
                            )
                            continue
                    done_ids.append(item["id"])
                    events.extend(item_events)
                    sends += sum(isinstance(e, Send) for e in decision.effects)
            if done_ids:
                await conn.execute(
                    update(inbox_items)
                    .where(inbox_items.c.id.in_(done_ids))
                    .values(status="done", processed_at=self.pipeline.clock.now(),
                            attempts=inbox_items.c.attempts + 1)
                )
            fault("before_route_commit")
        fault("after_route_commit")
        if safe and failures == 0:
            self._safe_next = False
        self.processed += len(items) - failures
        if events:
            await self.publish(events)
        if sends or events:
            self.on_outbox()
        return len(items)

    async def _record_failure(self, conn: AsyncConnection, item: dict[str, Any], error: str) -> None:
        attempts = item["attempts"] + 1
        status = "failed" if attempts >= MAX_ITEM_ATTEMPTS else "pending"
        await conn.execute(
            update(inbox_items)
            .where(inbox_items.c.id == item["id"])
            .values(attempts=attempts, last_error=error[:2000], status=status)
        )
        if status == "failed":
            log.error("inbox item %s gave up after %s attempts: %s", item["id"], attempts, error,
                      extra={"inbox_item_id": item["id"]})
        else:
            # back off a little so a poisoned item does not spin
            await asyncio.sleep(min(0.05 * attempts, 0.5))
