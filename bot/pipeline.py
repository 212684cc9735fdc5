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

from sqlalchemy import and_, bindparam, case, cast, exists, false, func, literal, null, select, true, update
from sqlalchemy.dialects.postgresql import ARRAY, REGCLASS
from sqlalchemy.dialects.postgresql import insert as pg_insert
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
from storage.db import insert_ignore, is_sqlite, one_of
from storage.models import (
    PENDING,
    UNSENT,
    conversations,
    customers,
    identities,
    inbox_items,
    messages,
    outbox_items,
    teams,
)
from storage.repositories import add_touchpoint, find_identities, find_or_create_customer
from storage.unit_of_work import current as current_uow
from storage.unit_of_work import insert, unit_of_work, update_row

log = logging.getLogger("loket.pipeline")

MAX_ITEM_ATTEMPTS = 5

_LAST_CHOICES = (
    select(messages.c.choices)
    .where(messages.c.conversation_id == conversations.c.id, messages.c.direction == "out")
    .order_by(messages.c.id.desc())
    .limit(1)
    .scalar_subquery()
    .label("last_choices")
)
_LATEST_CONVERSATIONS = select(conversations, _LAST_CHOICES).where(
    conversations.c.id.in_(
        select(func.max(conversations.c.id))
        .where(one_of(conversations.c.identity_id, "ids"))
        .group_by(conversations.c.identity_id)
    )
)
_EARLIER_IN = inbox_items.alias("earlier")
# The oldest pending item of each key: pending rows in id order (index status, id), each checked with one
# seek (index key, status, id) for an older pending item of its key. Stops after ``n``: the cost follows the
# batch, not the backlog.
_CLAIM_SQLITE = (
    select(inbox_items.c.id, inbox_items.c.key, inbox_items.c.payload, inbox_items.c.attempts)
    .where(
        inbox_items.c.status == PENDING,
        ~exists().where(_EARLIER_IN.c.key == inbox_items.c.key, _EARLIER_IN.c.status == PENDING,
                        _EARLIER_IN.c.id < inbox_items.c.id),
    )
    .order_by(inbox_items.c.id)
    .limit(bindparam("n"))
)
_CLAIM_PG = _CLAIM_SQLITE.with_for_update(skip_locked=True, of=inbox_items)
# The two conditions a freshly stored message is checked against, written once for both databases:
# an older item of its key still pending (not one of the batch just stored), and an unsent reply of its key.
# ``key``: the key expression to correlate with, or None in a query over the table's own keys.
def _older_pending(not_in_batch: Any, key: Any = None) -> Any:
    cond = and_(inbox_items.c.status == PENDING, not_in_batch)
    return cond if key is None else and_(inbox_items.c.key == key, cond)


def _unsent_reply(key: Any = None) -> Any:
    cond = outbox_items.c.status.in_(UNSENT)
    return cond if key is None else and_(outbox_items.c.key == key, cond)


# SQLite: the keys of freshly stored items with an older item still pending (those wait for the claim loop)
_OLDER_PENDING = (
    select(inbox_items.c.key)
    .where(_older_pending(inbox_items.c.id.not_in(bindparam("ids", expanding=True))),
           inbox_items.c.key.in_(bindparam("keys", expanding=True)))
    .distinct()
)
# PostgreSQL, one round trip to store a batch, check it and decide which of its messages this transaction routes:
# the rows go in from one array per column (duplicates of an earlier delivery skipped). The first message of each
# conversation key in the batch is checked: is an older item of its key still pending, is an unsent reply of its
# key waiting (the handoff's busy keys), and then (only if nothing older waits) the advisory lock that lets one
# process route the key now. A message that passes goes in already ``done`` (this transaction routes it, or rolls
# back with it: no second write of the row); the rest go in ``pending`` for the claim loop. The checks read the
# statement's snapshot, which does not hold the rows it inserts: "older" means stored before this batch. The
# text is the same whatever the batch size.
_INBOX_COLUMNS = ("channel", "provider_message_id", "key", "payload", "received_at")
_INCOMING = select(func.unnest(*[
    bindparam(c, type_=ARRAY(inbox_items.c[c].type)) for c in _INBOX_COLUMNS
]).table_valued(*_INBOX_COLUMNS, with_ordinality="n").render_derived()).cte("incoming")
_HEADS = (select(_INCOMING.c.key, func.min(_INCOMING.c.n).label("n"))
          .group_by(_INCOMING.c.key).cte("heads"))


def _next_ids(table: Any) -> Any:
    """The table's next id; the sequence is looked up once per statement (an InitPlan), not once per row."""
    return func.nextval(select(cast(func.pg_get_serial_sequence(table.name, "id"), REGCLASS)).scalar_subquery())


def _probe(table: Any, condition: Any) -> Any:
    """EXISTS, probed once per row through the (key, status, id) index. The OFFSET keeps PostgreSQL from
    turning it into a hashed subplan, which reads every pending or sending row of the table through the status
    index, dead index entries of rows already done included: with a busy outbox that was thousands of entries
    and most of this statement's time (4-6 ms instead of ~1.5 ms for 31 messages, measured)."""
    return select(table.c.id).where(condition).offset(0).exists()


_CHECKED = select(
    _HEADS.c.key, _HEADS.c.n,
    _probe(inbox_items, _older_pending(true(), _HEADS.c.key)).label("older"),
    _probe(outbox_items, _unsent_reply(_HEADS.c.key)).label("waiting"),
).offset(0).cte("checked")  # the fence: each key probed once, before its lock is tried
_LOCKED = select(
    _CHECKED,
    case((_CHECKED.c.older, false()), else_=func.pg_try_advisory_xact_lock(func.hashtext(_CHECKED.c.key)))
    .label("locked"),
).offset(0).cte("locked")
_ROUTE_NOW = and_(_LOCKED.c.n == _INCOMING.c.n, _LOCKED.c.locked)
_STORED = (
    pg_insert(inbox_items)
    .from_select(
        ["channel", "provider_message_id", "key", "payload", "received_at", "status", "attempts", "last_error",
         "processed_at"],
        select(
            _INCOMING.c.channel, _INCOMING.c.provider_message_id, _INCOMING.c.key, _INCOMING.c.payload,
            _INCOMING.c.received_at,
            case((_ROUTE_NOW, literal("done")), else_=literal("pending")),
            case((_ROUTE_NOW, literal(1)), else_=literal(0)),
            null(),
            case((_ROUTE_NOW, _INCOMING.c.received_at), else_=null()),
        ).select_from(_INCOMING.join(_LOCKED, _LOCKED.c.key == _INCOMING.c.key)).order_by(_INCOMING.c.n),
    )
    .on_conflict_do_nothing()
    .returning(inbox_items.c.id, inbox_items.c.channel, inbox_items.c.provider_message_id, inbox_items.c.key,
               inbox_items.c.status)
    .cte("stored")
)
# ... and, in the same round trip, the ids a routed message usually needs: its own message row, one reply and
# the reply's outbox row (handed to the unit of work; what routing does not use is a gap in the sequence).
_STORE_AND_CHECK_PG = select(
    _STORED.c.id, _STORED.c.channel, _STORED.c.provider_message_id, _STORED.c.key, _STORED.c.status,
    _LOCKED.c.waiting, _next_ids(messages), _next_ids(messages), _next_ids(outbox_items),
).select_from(_STORED.join(_LOCKED, _LOCKED.c.key == _STORED.c.key))


@dataclass
class _Pending:
    msg: InboundMessage
    future: asyncio.Future[bool]


class InboxWriter:
    """Persist-then-ack with group commit.

    With a ``router`` (one process that also routes: ``loket run``), the transaction that stores a batch
    also routes the messages that are next in their conversation, so a message, its reply and the timeline
    are committed at once and the reply goes straight to the dispatcher: one transaction per message instead
    of two, and no wait for the router worker. A message whose conversation has older messages still waiting
    is only stored; the router worker routes it in order. If routing fails, the batch is stored without it.
    """

    def __init__(self, engine: AsyncEngine, clock: Clock, on_commit: Callable[[], None]) -> None:
        self.engine = engine
        self.clock = clock
        self.on_commit = on_commit
        self.router: RouterWorker | None = None
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
            results, routed = await self._write([msg])
            await self._after(routed)
            return results[0]
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
                results, routed = await self._write([p.msg for p in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, res in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(res)
            await self._after(routed)

    async def _after(self, routed: Routed | None) -> None:
        if routed is not None and self.router is not None:
            try:
                await self.router.after_commit(routed)
            except Exception:  # noqa: BLE001 - committed already; sends are recovered from the outbox
                log.exception("handing routed messages on failed")

    async def _write(self, batch: list[InboundMessage]) -> tuple[list[bool], Routed | None]:
        now = self.clock.now()
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for msg in batch:
            ident = (msg.channel, msg.provider_message_id)
            if ident not in seen:
                seen.add(ident)
                rows.append({"channel": msg.channel, "provider_message_id": msg.provider_message_id, "key": msg.key,
                             "payload": msg.to_payload(), "status": "pending", "attempts": 0, "last_error": None,
                             "received_at": now, "processed_at": None})
        routed: Routed | None = None
        stored: dict[tuple[str, str], int] = {}
        if self.router is not None and self.router.route_at_receive:
            try:
                stored, routed = await self._store(rows, batch)
            except Exception:  # noqa: BLE001 - store without routing; the router worker routes them
                log.exception("routing %d messages as they were stored failed; storing them for the router",
                              len(rows))
                routed, stored = None, {}
        if routed is None:
            stored, _ = await self._store(rows, None)
        fault("after_inbox_commit")
        results: list[bool] = []
        for msg in batch:
            ident = (msg.channel, msg.provider_message_id)
            results.append(ident in stored)
            stored.pop(ident, None)  # a second copy in the same batch is the duplicate
        if routed is None or routed.left_pending:
            self.on_commit()
        return results, routed

    async def _store(
        self, rows: list[dict[str, Any]], batch: list[InboundMessage] | None
    ) -> tuple[dict[tuple[str, str], int], Routed | None]:
        """Insert the rows (duplicates ignored) → ids of the new ones; with ``batch``, route them too."""
        routed: Routed | None = None
        async with self.engine.begin() as conn:
            if batch is not None and self.router is not None and not is_sqlite(conn):
                return await self._store_and_route_pg(conn, rows, batch, self.router)
            if self._insert is None:
                self._insert = insert_ignore(conn, inbox_items).returning(
                    inbox_items.c.id, inbox_items.c.channel, inbox_items.c.provider_message_id
                )
            stored = {(r[1], r[2]): r[0] for r in (await conn.execute(self._insert, rows)).all()}
            if batch is not None and self.router is not None:
                routed = await self.router.route_fresh(conn, _fresh(batch, stored))
                fault("before_route_commit")
        return stored, routed

    async def _store_and_route_pg(self, conn: AsyncConnection, rows: list[dict[str, Any]],
                                  batch: list[InboundMessage], router: RouterWorker
                                  ) -> tuple[dict[tuple[str, str], int], Routed]:
        """PostgreSQL: store and check the batch in one statement (``_STORE_AND_CHECK_PG``), then route it."""
        params = {c: [r[c] for r in rows] for c in _INBOX_COLUMNS}
        stored: dict[tuple[str, str], int] = {}
        done: set[int] = set()
        busy: set[str] = set()
        ids: dict[Any, list[int]] = {messages: [], outbox_items: []}
        for pk, channel, pmid, key, status, waiting, m1, m2, o in (
                await conn.execute(_STORE_AND_CHECK_PG, params)).all():
            stored[(channel, pmid)] = pk
            if status == "done":
                done.add(pk)
            if waiting:
                busy.add(key)
            ids[messages] += (m1, m2)
            ids[outbox_items].append(o)
        routed = await router.route_fresh(conn, _fresh(batch, stored), done_at_store=done, busy=busy, ids=ids)
        fault("before_route_commit")
        return stored, routed


def _fresh(batch: list[InboundMessage], stored: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    """The batch's newly stored messages as inbox items, in id order (the order the claim loop keeps for what
    is left pending); a second copy of a message in the batch is the duplicate."""
    fresh: dict[int, dict[str, Any]] = {}
    for msg in batch:
        pk = stored.get((msg.channel, msg.provider_message_id))
        if pk is not None and pk not in fresh:
            fresh[pk] = {"id": pk, "key": msg.key, "attempts": 0, "msg": msg}
    return [fresh[pk] for pk in sorted(fresh)]


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
    handoff: Handoff | None = None
    claimed: list[tuple[int, int, dict[str, Any], Any]] = field(default_factory=list)  # for the handoff
    # The conversation and customer rows as this transaction last saw them, and the unit of work's count of
    # other writes at that moment: while no other statement wrote anything, they need not be read again.
    _rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    _rows_seen: int = -1

    def remember(self, **rows: dict[str, Any]) -> None:
        uow = current_uow(self.conn)
        if uow is not None:
            self._rows.update(rows)
            self._rows_seen = uow.other_writes

    def _fresh(self, name: str) -> dict[str, Any] | None:
        uow = current_uow(self.conn)
        if uow is None or uow.other_writes != self._rows_seen:
            return None
        return self._rows.get(name)

    async def conversation_row(self) -> dict[str, Any]:
        row = self._fresh("conversation")
        if row is None:
            row = dict((await self.conn.execute(
                select(conversations).where(conversations.c.id == self.conversation_id)
            )).mappings().one())
            self.remember(conversation=row)
        return row

    async def customer_row(self) -> dict[str, Any]:
        row = self._fresh("customer")
        if row is None:
            row = dict((await self.conn.execute(
                select(customers).where(customers.c.id == self.customer_id)
            )).mappings().one())
            self.remember(customer=row)
        return row

    async def update_conversation(self, values: dict[str, Any]) -> None:
        await update_row(self.conn, conversations, self.conversation_id, values)
        row = self._fresh("conversation")
        if row is not None:
            row.update(values)

    async def update_customer(self, values: dict[str, Any]) -> None:
        await update_row(self.conn, customers, self.customer_id, values)
        row = self._fresh("customer")
        if row is not None:
            row.update(values)


_UNKNOWN: Any = object()  # "the caller did not look the conversation up"
_BUSY_KEYS = select(outbox_items.c.key).where(_unsent_reply(), one_of(outbox_items.c.key, "keys")).distinct()


@dataclass
class Handoff:
    """Replies claimed for this process's dispatcher in the transaction that writes them (see ``Pipeline.send``)."""

    worker_id: str
    until: Any
    room: int
    busy: set[str]  # ordering keys with an unsent older reply: their new replies wait their turn in the outbox
    rows: list[dict[str, Any]] = field(default_factory=list)
    waiting: int = 0  # replies written as pending for the dispatcher's next claim


@dataclass
class _Routing:
    """One inbound message on its way through ``handle_batch``."""

    msg: InboundMessage
    events: list[tuple[str, dict[str, Any]]]
    lang_guess: str | None
    identity: dict[str, Any]
    customer: dict[str, Any]
    customer_new: bool


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
        self.dispatcher: Any = None  # this process's dispatcher, when it runs one: replies are handed to it

    async def handoff_for(self, conn: AsyncConnection, keys: list[str], now: Any,
                          busy: set[str] | None = None) -> Handoff | None:
        """A handoff for a routing batch, if this process dispatches and has room (``busy``: the keys with an
        unsent reply, read here unless the caller already has them)."""
        d = self.dispatcher
        room = d.room() if d is not None else 0
        if room <= 0:
            return None
        if busy is None:
            busy = {r[0] for r in (await conn.execute(_BUSY_KEYS, {"keys": keys})).all()} if keys else set()
        return Handoff(worker_id=d.worker_id, until=now + d.lease, room=room, busy=busy)

    # ---------------------------------------------------------------- conversations
    async def latest_conversations(self, conn: AsyncConnection, identity_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Each identity's newest conversation (with the choices of its last bot message), in one query."""
        if not identity_ids:
            return {}
        rows = (await conn.execute(_LATEST_CONVERSATIONS, {"ids": identity_ids})).mappings().all()
        return {r["identity_id"]: dict(r) for r in rows}

    async def open_conversation(
        self, conn: AsyncConnection, identity: dict[str, Any], customer: dict[str, Any], now: Any,
        latest: dict[str, Any] | None = _UNKNOWN,
    ) -> tuple[dict[str, Any], bool, bool]:
        """The identity's open conversation, a reopened one, or a new one: (row, is_new, reopened).

        ``latest`` is the identity's newest conversation when the caller has read it already (None: it has none).
        """
        if latest is _UNKNOWN:
            latest = (await self.latest_conversations(conn, [identity["id"]])).get(identity["id"])
        row = latest
        if row is not None and row["state"] != "resolved":
            return {**row}, False, False
        if row is not None and row["resolved_at"] is not None and now - aware(row["resolved_at"]) <= self.reopen_window:
            values = {"state": "bot", "resolved_at": None, "updated_at": now, "flow": None}
            await update_row(conn, conversations, row["id"], values)
            await add_touchpoint(
                conn, customer_id=customer["id"], conversation_id=row["id"], kind="state_changed", now=now,
                channel=identity["channel"], payload={"from": "resolved", "to": "bot", "reason": "customer_returned"},
            )
            return {**row, **values}, False, True
        fresh: dict[str, Any] = {c.name: None for c in conversations.c}
        fresh.update({
            "customer_id": customer["id"], "identity_id": identity["id"], "channel": identity["channel"],
            "state": "bot", "language": None, "priority": "normal", "labels": [], "meta": {},
            "created_at": now, "updated_at": now,
        })
        del fresh["id"]
        conv_id = await insert(conn, conversations, dict(fresh), want_id=True)
        await add_touchpoint(
            conn, customer_id=customer["id"], conversation_id=conv_id, kind="conversation_opened", now=now,
            channel=identity["channel"], payload={},
        )
        return {**fresh, "id": conv_id, "last_choices": []}, True, False

    # ---------------------------------------------------------------- inbound
    async def handle_inbound(
        self, conn: AsyncConnection, msg: InboundMessage, events: list[tuple[str, dict[str, Any]]]
    ) -> Decision:
        return (await self.handle_batch(conn, [msg], [events]))[0]

    async def handle_batch(
        self, conn: AsyncConnection, msgs: list[InboundMessage], events: list[list[tuple[str, dict[str, Any]]]],
        handoff: Handoff | None = None,
    ) -> list[Decision]:
        """Route messages of *different* conversations (one per ordering key) in one transaction.

        The reads are shared (one query for all identities, one for all conversations, made after the
        pre-route hooks so they see what the hooks changed); inside a unit of work the writes are too.
        ``events[i]`` receives message i's domain events; with a ``handoff``, replies are claimed for this
        process's dispatcher (the caller hands ``handoff.rows`` to it after the commit).
        """
        now = self.clock.now()
        uow = current_uow(conn)
        if uow is not None:
            uow.expect[messages] = 2 * len(msgs)  # each message in, and usually one reply
            if handoff is not None:  # replies claimed for this process's dispatcher need their outbox ids
                uow.expect[outbox_items] = max(1, min(len(msgs), handoff.room))
        known = await find_identities(conn, [(m.channel, m.address) for m in msgs])
        if uow is not None:  # one sequence round trip per table for the batch's new rows (PostgreSQL)
            new = sum((m.channel, m.address) not in known for m in msgs)
            uow.expect[customers] = uow.expect[identities] = new
        pending: list[_Routing] = []
        for msg, item_events in zip(msgs, events, strict=True):
            pending.append(await self._who(conn, msg, item_events, known, now))
        latest = await self.latest_conversations(
            conn, [p.identity["id"] for p in pending if not p.customer_new]
        )
        if uow is not None:
            uow.expect[conversations] = sum(
                1 for p in pending if (c := latest.get(p.identity["id"])) is None or c["state"] == "resolved"
            )
        return [await self._route(conn, p, latest.get(p.identity["id"]), now, handoff) for p in pending]

    async def _who(
        self, conn: AsyncConnection, msg: InboundMessage, events: list[tuple[str, dict[str, Any]]],
        known: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]], now: Any,
    ) -> _Routing:
        """The sender's identity and customer record (created if new), after the pre-route hooks."""
        lang_guess = msg.language_hint if msg.language_hint in {"id", "en"} else detect_language(msg.text)
        identity, customer, cust_new = await find_or_create_customer(
            conn, channel=msg.channel, address=msg.address, now=now,
            display_name=msg.display_name, language=lang_guess, known=known,
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
            await update_row(conn, identities, identity["id"], ident_values)
            identity = {**identity, **ident_values}
        last_seen = aware(customer["last_seen_at"])
        name_missing = bool(msg.display_name and not customer["display_name"])
        if not cust_new and (last_seen is None or now - last_seen >= REFRESH or name_missing):
            cust_values: dict[str, Any] = {"last_seen_at": now}
            if name_missing:
                cust_values["display_name"] = msg.display_name
            await update_row(conn, customers, customer["id"], cust_values)
            customer = {**customer, **cust_values}
        return _Routing(msg, events, lang_guess, identity, customer, cust_new)

    async def _route(self, conn: AsyncConnection, p: _Routing, latest: dict[str, Any] | None, now: Any,
                     handoff: Handoff | None = None) -> Decision:
        msg, identity, customer, cust_new = p.msg, p.identity, p.customer, p.customer_new
        conv, conv_new, reopened = await self.open_conversation(conn, identity, customer, now, latest=latest)
        if conv_new and p.lang_guess and not conv["language"]:
            conv["language"] = p.lang_guess if cust_new or msg.language_hint else customer["language"]
        in_id = await insert(conn, messages, {
            "conversation_id": conv["id"], "customer_id": customer["id"], "channel": msg.channel,
            "direction": "in", "author": "customer", "agent_id": None, "body": msg.text, "choices": [],
            "attachments": [a.to_dict() for a in msg.attachments], "purpose": msg.kind,
            "channel_message_id": msg.provider_message_id, "status": "received", "error": None,
            "meta": {"button_payload": msg.button_payload, **msg.meta} if msg.button_payload or msg.meta else {},
            "created_at": now, "sent_at": None, "delivered_at": None,
        }, want_id=True)
        await add_touchpoint(
            conn, customer_id=customer["id"], conversation_id=conv["id"], message_id=in_id, kind="message_in",
            now=now, channel=msg.channel, actor="customer",
            payload={"text": msg.text[:2000], "kind": msg.kind, "button": msg.button_payload,
                     "attachments": len(msg.attachments)},
        )
        conv_values = {"last_message_at": now, "updated_at": now, "language": conv["language"]}
        await update_row(conn, conversations, conv["id"], conv_values)
        conv.update(conv_values)
        p.events.append((
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
                            identity=identity, channel=msg.channel, message_id=in_id, events=p.events, route=ctx,
                            handoff=handoff)
        actx.remember(conversation=conv, customer=customer)
        await self.apply(actx, decision.effects, state_before=conv["state"])
        await self.run_sinks(conn, p.events, now)
        if actx.claimed:
            await self._hand_over(actx)
        return decision

    async def _hand_over(self, actx: ApplyContext) -> None:
        """The dispatcher's view of the replies claimed for it, as ``Dispatcher.claim`` would have read them
        (after the event sinks, which may have added threading headers to the conversation)."""
        assert actx.handoff is not None
        conv_meta = (await actx.conversation_row())["meta"]
        ident = actx.identity
        for outbox_id, msg_id, reply, now in actx.claimed:
            actx.handoff.rows.append({
                "outbox_id": outbox_id, "attempts": 1, "queued_at": now, "message_id": msg_id,
                "conversation_id": actx.conversation_id, "customer_id": actx.customer_id, "channel": actx.channel,
                "meta": {"reply": reply}, "body": reply["text"], "address": ident["address"],
                "identity_meta": ident["meta"], "last_inbound_at": ident["last_inbound_at"],
                "unreachable": ident["unreachable"], "identity_id": ident["id"], "conversation_meta": conv_meta,
            })
        actx.claimed.clear()

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
                await actx.update_conversation(values)
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
                await actx.update_conversation({"flow": eff.position})
            elif isinstance(eff, Touch):
                await add_touchpoint(
                    conn, customer_id=actx.customer_id, conversation_id=actx.conversation_id,
                    message_id=actx.message_id, kind=eff.kind, now=now, channel=actx.channel, actor=eff.actor,
                    payload=eff.payload,
                )
            elif isinstance(eff, UpdateCustomer):
                await self._update_customer(actx, eff)
            elif isinstance(eff, UpdateConversation):
                await self._update_conversation(actx, eff)
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

    async def _update_customer(self, actx: ApplyContext, eff: UpdateCustomer) -> None:
        cust = await actx.customer_row()
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
        await actx.update_customer(values)
        if eff.language:
            await actx.update_conversation({"language": eff.language})

    async def _update_conversation(self, actx: ApplyContext, eff: UpdateConversation) -> None:
        conv = await actx.conversation_row()
        values: dict[str, Any] = {"updated_at": actx.now}
        if eff.priority and eff.priority != conv["priority"]:
            values["priority"] = eff.priority
            await add_touchpoint(
                actx.conn, customer_id=actx.customer_id, conversation_id=actx.conversation_id,
                kind="priority_changed", now=actx.now, channel=actx.channel,
                payload={"from": conv["priority"], "to": eff.priority},
            )
        if eff.add_labels:
            values["labels"] = sorted(set(conv["labels"] or []) | set(eff.add_labels))
        if eff.language:
            values["language"] = eff.language
        if eff.meta:
            values["meta"] = {**(conv["meta"] or {}), **eff.meta}
        await actx.update_conversation(values)

    async def send(self, actx: ApplyContext, reply: Reply) -> int:
        """Write an outbound message and its outbox row (same transaction as the decision)."""
        conn, now = actx.conn, actx.now
        payload = reply.to_payload()
        msg_id = await insert(conn, messages, {
            "conversation_id": actx.conversation_id, "customer_id": actx.customer_id,
            "channel": actx.channel, "direction": "out", "author": reply.author, "agent_id": reply.agent_id,
            "body": reply.text, "choices": [c.to_dict() for c in reply.choices],
            "attachments": [a.to_dict() for a in reply.attachments], "purpose": reply.purpose,
            "channel_message_id": None, "status": "queued", "error": None,
            "meta": {"reply": payload}, "created_at": now, "sent_at": None, "delivered_at": None,
        }, want_id=True)
        assert msg_id is not None
        key = f"{actx.identity['channel']}:{actx.identity['address']}"
        h = actx.handoff
        if h is not None and h.room > 0 and key not in h.busy:
            # claimed for this process's dispatcher in the same transaction (as its claim would have done)
            outbox_id = await insert(conn, outbox_items, {
                "message_id": msg_id, "channel": actx.channel, "key": key, "status": "sending", "attempts": 1,
                "next_attempt_at": now, "locked_by": h.worker_id, "locked_until": h.until, "last_error": None,
                "provider_message_id": None, "created_at": now, "sent_at": None,
            }, want_id=True)
            h.room -= 1
            actx.claimed.append((int(outbox_id or 0), msg_id, payload, now))
        else:
            await insert(conn, outbox_items, {
                "message_id": msg_id, "channel": actx.channel, "key": key, "status": "pending", "attempts": 0,
                "next_attempt_at": now, "locked_by": None, "locked_until": None, "last_error": None,
                "provider_message_id": None, "created_at": now, "sent_at": None,
            })
            if h is not None:
                h.waiting += 1
        if h is not None:
            h.busy.add(key)  # a second reply in this transaction waits for the first to be sent
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


@dataclass
class Routed:
    """What routing a batch produced, for after its commit (``RouterWorker.after_commit``)."""

    items: int = 0
    failures: int = 0
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    handoff: Handoff | None = None
    left_pending: int = 0  # stored but not routed (their conversation had older messages waiting)


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
        self.route_at_receive = True  # with InboxWriter.router set: route as messages are stored

    def nudge(self) -> None:
        self.wakeup.set()

    async def run(self) -> None:
        """Run ``loops`` claim loops; on PostgreSQL several transactions route different conversations at once.

        Only the first loop polls; the others wait for a nudge, or for the first loop to find a full batch (a
        backlog), so an idle worker sends one empty claim per interval, not one per loop."""
        await asyncio.gather(*(self._run_one(polls=i == 0) for i in range(max(1, self.loops))))

    async def _run_one(self, polls: bool = True) -> None:
        while not self._stopping:
            try:
                n = await self.process_batch()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broken DB connection must not kill the worker
                log.exception("router worker batch failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if n >= self.batch_size:
                self.wakeup.set()  # more may be waiting: the other loops help
            elif n == 0:
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), timeout=self.poll_interval if polls else None)
                except TimeoutError:
                    pass

    def stop(self) -> None:
        self._stopping = True
        self.wakeup.set()

    async def _claim(self, conn: AsyncConnection) -> list[dict[str, Any]]:
        """The oldest pending item of each ordering key, oldest first: one message per conversation per batch.

        On PostgreSQL the rows are locked with SKIP LOCKED. A key whose oldest item another worker holds is
        skipped entirely (its later items are not the oldest of their key), so each conversation is routed by
        one transaction at a time, in arrival order, without any other lock.
        """
        stmt = _CLAIM_SQLITE if is_sqlite(conn) else _CLAIM_PG
        return [dict(r) for r in (await conn.execute(stmt, {"n": self.batch_size})).mappings().all()]

    async def process_batch(self) -> int:
        """Route a batch of inbox items in one transaction.

        Fast path: one unit of work, no savepoints. If any item raises, the whole transaction is rolled back
        and the batch is routed again in safe mode, where each item runs in its own savepoint so one poisoned
        message cannot hold up the rest (it is retried a few times, then marked ``failed`` for a supervisor).
        """
        try:
            return await self._process(safe=self._safe_next)
        except _BatchNeedsSafeMode:
            self._safe_next = True
            return await self._process(safe=True)

    async def route_items(self, conn: AsyncConnection, items: list[dict[str, Any]],
                          busy: set[str] | None = None, ids: dict[Any, list[int]] | None = None) -> Routed:
        """Route items of different conversations (``id``, ``key``, ``attempts``, ``msg``) and mark them done,
        in one unit of work on ``conn``'s transaction. Raises if any of them fails (nothing is kept then).
        ``busy``: the keys with an unsent reply, when the caller has read them already; ``ids``: sequence
        values per table the caller already fetched (PostgreSQL)."""
        now = self.pipeline.clock.now()
        per_item: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in items]
        async with unit_of_work(conn) as uow:
            for table, values in (ids or {}).items():
                uow.provide_ids(table, values)
            handoff = await self.pipeline.handoff_for(conn, [i["key"] for i in items], now, busy)
            await self.pipeline.handle_batch(conn, [i["msg"] for i in items], per_item, handoff)
            for item in items:
                if not item.get("done"):  # (stored as done already by the statement that stored it)
                    await update_row(conn, inbox_items, item["id"],
                                     {"status": "done", "processed_at": now, "attempts": item["attempts"] + 1})
        return Routed(items=len(items), events=[e for evs in per_item for e in evs], handoff=handoff)

    async def route_fresh(self, conn: AsyncConnection, fresh: list[dict[str, Any]], *,
                          done_at_store: set[int] | None = None, busy: set[str] | None = None,
                          ids: dict[Any, list[int]] | None = None) -> Routed:
        """Route messages just inserted in ``conn``'s transaction that are next in their conversation.

        A message whose conversation has an older message still pending (or another one in this batch) is
        left pending for the claim loop, which keeps arrival order. On PostgreSQL, two processes storing
        messages of one conversation at the same moment cannot see each other's rows yet: an advisory lock
        on the key lets only one of them route it.

        ``done_at_store`` (PostgreSQL): the ids the statement that stored the batch already inserted as ``done``
        after checking their conversations and taking their locks; exactly those are routed here, and a failure
        rolls them back with everything else. ``busy``: the keys with an unsent reply, read by that statement;
        ``ids``: sequence values it fetched for the routing.
        """
        routed = Routed()
        if not fresh:
            return routed
        if done_at_store is None:
            keys = sorted({f["key"] for f in fresh})
            stored = [f["id"] for f in fresh]
            blocked = {r[0] for r in (await conn.execute(_OLDER_PENDING, {"keys": keys, "ids": stored})).all()}
            heads: list[dict[str, Any]] = []
            for f in fresh:
                if f["key"] in blocked:
                    routed.left_pending += 1
                    continue
                blocked.add(f["key"])  # a later message of this conversation in the batch waits for the claim loop
                heads.append(f)
        else:
            heads = [{**f, "done": True} for f in fresh if f["id"] in done_at_store]
            routed.left_pending = len(fresh) - len(heads)
        if heads:
            done = await self.route_items(conn, heads, busy, ids)
            done.left_pending = routed.left_pending
            return done
        return routed

    async def after_commit(self, routed: Routed) -> None:
        """What a committed batch leads to: replies to the dispatcher, events to the subscribers."""
        self.processed += routed.items - routed.failures
        handoff = routed.handoff
        if handoff is not None and handoff.rows:
            self.pipeline.dispatcher.take(handoff.rows)
        if routed.events:
            await self.publish(routed.events)
        if routed.items and (handoff is None or handoff.waiting):
            self.on_outbox()

    async def _process(self, safe: bool) -> int:
        async with self.engine.begin() as conn:
            items = await self._claim(conn)
            if not items:
                self._safe_next = False
                return 0
            for item in items:
                item["msg"] = InboundMessage.from_payload(item["payload"])
            if not safe:
                try:
                    routed = await self.route_items(conn, items)
                except Exception as exc:
                    raise _BatchNeedsSafeMode from exc
            else:
                routed = Routed(items=len(items))
                now = self.pipeline.clock.now()
                for item in items:
                    item_events: list[tuple[str, dict[str, Any]]] = []
                    try:
                        async with conn.begin_nested(), unit_of_work(conn):
                            await self.pipeline.handle_inbound(conn, item["msg"], item_events)
                            await update_row(conn, inbox_items, item["id"], {
                                "status": "done", "processed_at": now, "attempts": item["attempts"] + 1})
                    except Exception as exc:  # noqa: BLE001 - isolate one poisoned message from the rest
                        log.exception("routing inbox item %s failed", item["id"],
                                      extra={"inbox_item_id": item["id"], "channel": item["msg"].channel})
                        routed.failures += 1
                        await self._record_failure(conn, item, "".join(traceback.format_exception_only(exc)).strip())
                        continue
                    routed.events.extend(item_events)
            fault("before_route_commit")
        fault("after_route_commit")
        if safe and routed.failures == 0:
            self._safe_next = False
        await self.after_commit(routed)
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
