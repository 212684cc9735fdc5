"""Outbox dispatcher: sends queued messages through their channel, with retries and a visible give-up.

Claims rows in one statement that records who holds them and until when (SKIP LOCKED on PostgreSQL);
only the oldest unsent row of each conversation key is claimable, so a conversation's messages go out in
order and a slow or failing conversation does not hold up the others. Backoff is capped exponential with
full jitter; a row that keeps failing past ``max_attempts`` or ``max_age`` ends ``failed`` on the message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.base import ChannelRegistry, PermanentSendError, SendError, TransientSendError
from bot.clock import Clock, aware
from bot.faults import fault
from bot.messages import OutboundMessage, ProviderReceipt, Reply
from storage.db import is_sqlite, one_of
from storage.models import PENDING, SENDING, UNSENT, conversations, identities, messages, outbox_items
from storage.repositories import add_touchpoint
from storage.unit_of_work import update_row, write_only

log = logging.getLogger("loket.dispatcher")

EXPIRY_CHECK_SECONDS = 5.0
# How long the recorder waits for more send results before writing a small batch: at low load the results of
# several sends share one statement instead of one or two each (a third as many at 750 replies/s, and less server
# and database CPU per reply; BENCHMARKS.md §1). Not while rows may be waiting behind a send in flight
# (``_maybe_waiting``): those are claimable only once it is recorded.
RECORD_WINDOW_SECONDS = 0.01
RECORD_WINDOW_BELOW = 32  # results already queued: no need to wait for more

_EARLIER = outbox_items.alias("earlier")
# only the oldest unsent row of each conversation key: its messages go out in order
_HEAD_OF_KEY = ~exists().where(
    _EARLIER.c.key == outbox_items.c.key,
    _EARLIER.c.status.in_(UNSENT),
    _EARLIER.c.id < outbox_items.c.id,
)
# Due rows in id order (index status, id), each checked with one seek (index key, status, id); the cost
# follows the batch, not the backlog.
_CLAIMABLE_SQLITE = (
    select(outbox_items.c.id)
    .where(outbox_items.c.status == PENDING, outbox_items.c.next_attempt_at <= bindparam("now"), _HEAD_OF_KEY)
    .order_by(outbox_items.c.id)
    .limit(bindparam("n"))
)
# claims whose lease ran out (their process died or hung): looked for every few seconds, not on every claim
_EXPIRED_SQLITE = (
    select(outbox_items.c.id, outbox_items.c.locked_by, outbox_items.c.message_id)
    .where(outbox_items.c.status == SENDING, outbox_items.c.locked_until < bindparam("now"), _HEAD_OF_KEY)
    .order_by(outbox_items.c.id)
    .limit(bindparam("n"))
)
_EXPIRED_PG = _EXPIRED_SQLITE.with_for_update(skip_locked=True, of=outbox_items)
_CLAIMABLE_PG = _CLAIMABLE_SQLITE.with_for_update(skip_locked=True, of=outbox_items)
_MARK_CLAIMED = (
    update(outbox_items)
    .where(one_of(outbox_items.c.id, "ids"))
    .values(status="sending", locked_by=bindparam("by"), locked_until=bindparam("until"),
            attempts=outbox_items.c.attempts + 1)
)
_CLAIMED_ROWS = (
    select(
        outbox_items.c.id.label("outbox_id"),
        outbox_items.c.attempts,
        outbox_items.c.created_at.label("queued_at"),
        messages.c.id.label("message_id"),
        messages.c.conversation_id,
        messages.c.customer_id,
        messages.c.channel,
        messages.c.meta,
        messages.c.body,
        identities.c.address,
        identities.c.meta.label("identity_meta"),
        identities.c.last_inbound_at,
        identities.c.unreachable,
        identities.c.id.label("identity_id"),
        conversations.c.meta.label("conversation_meta"),
    )
    .select_from(
        outbox_items.join(messages, messages.c.id == outbox_items.c.message_id)
        .join(conversations, conversations.c.id == messages.c.conversation_id)
        .join(identities, identities.c.id == conversations.c.identity_id)
    )
    .where(one_of(outbox_items.c.id, "ids"))
    .order_by(outbox_items.c.id)
)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt)), at least base/2."""
    r = rng or random
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return max(base / 2, r.uniform(0, ceiling))


class Dispatcher:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        channels: ChannelRegistry,
        publish: Callable[[list[tuple[str, dict[str, Any]]]], Awaitable[None]],
        *,
        max_attempts: int = 8,
        max_age: timedelta = timedelta(hours=1),
        backoff_base: float = 0.5,
        backoff_cap: float = 300.0,
        lease: timedelta = timedelta(seconds=60),
        max_in_flight: int = 256,
        poll_interval: float = 0.5,
        send_timeout: float = 30.0,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.channels = channels
        self.publish = publish
        self.max_attempts = max_attempts
        self.max_age = max_age
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.lease = lease
        self.max_in_flight = max_in_flight
        self.poll_interval = poll_interval
        self.send_timeout = send_timeout
        self.worker_id = f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.wakeup = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._results: asyncio.Queue[tuple[dict[str, Any], Any] | None] = asyncio.Queue()
        self._stopping = False
        self._running = False
        self._next_expiry_check = 0.0
        # Whether rows may wait behind sends in flight (a conversation's later replies are claimable only
        # once the earlier one is recorded): then recording a result wakes the claim loop.
        self._maybe_waiting = True
        self.sent = 0
        # Observers of recorded results (metrics): fn(row, outcome "sent" | "retry" | "failed", now).
        self.on_result: list[Callable[[dict[str, Any], str, Any], None]] = []

    def nudge(self) -> None:
        """Rows may be waiting in the outbox (someone wrote them, or a retry is due): claim now."""
        self._maybe_waiting = True
        self.wakeup.set()

    def stop(self) -> None:
        self._stopping = True
        self.wakeup.set()

    async def recover_orphans(self) -> int:
        """Hand back rows claimed by a process of this host that is gone (crashed), without waiting for the lease.

        A send that was in flight at the crash may have reached the provider: it is sent again, which is the
        one duplicate DESIGN §3 allows (Telegram and Twilio take no idempotency key).
        """
        host = os.uname().nodename
        async with self.engine.begin() as conn:
            holders = [r[0] for r in (await conn.execute(
                select(outbox_items.c.locked_by).where(outbox_items.c.status == SENDING).distinct()
            )).all() if r[0]]
            dead = []
            for holder in holders:
                parts = holder.split(":")
                if len(parts) >= 2 and parts[0] == host and parts[1].isdigit() and int(parts[1]) != os.getpid() \
                        and not os.path.exists(f"/proc/{parts[1]}"):
                    dead.append(holder)
            if not dead:
                return 0
            result = await conn.execute(
                update(outbox_items)
                .where(outbox_items.c.status == SENDING, outbox_items.c.locked_by.in_(dead))
                .values(status="pending", locked_by=None, locked_until=None, next_attempt_at=self.clock.now())
            )
        log.warning("took back %s sends claimed by crashed processes %s", result.rowcount, dead)
        return int(result.rowcount or 0)

    async def run(self) -> None:
        try:
            await self.recover_orphans()
        except Exception:  # noqa: BLE001 - the leases expire anyway
            log.exception("could not check for sends held by crashed processes")
        recorder = asyncio.create_task(self._record_loop(), name="dispatch-recorder")
        self._running = True
        try:
            while not self._stopping:
                free = self.max_in_flight - len(self._in_flight)
                claimed: list[dict[str, Any]] = []
                if free > 0:
                    try:
                        claimed = await self.claim(min(free, 128))
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: BLE001
                        log.exception("outbox claim failed; retrying")
                        await asyncio.sleep(0.5)
                        continue
                self._start(claimed)
                if not claimed:
                    if not self._in_flight:
                        # nothing claimable and nothing in flight: no row waits behind a send of ours
                        self._maybe_waiting = False
                    self.wakeup.clear()
                    try:
                        await asyncio.wait_for(self.wakeup.wait(), timeout=self.poll_interval)
                    except TimeoutError:
                        pass
            if self._in_flight:
                await asyncio.wait(self._in_flight, timeout=self.send_timeout)
        finally:
            # let the recorder write every result it has (never cancel it mid-transaction), then stop it
            await self._results.put(None)
            try:
                await asyncio.wait_for(asyncio.shield(recorder), timeout=15)
            except (TimeoutError, asyncio.CancelledError):
                recorder.cancel()

    def _start(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            task = asyncio.create_task(self._send_one(row))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    @property
    def running(self) -> bool:
        return self._running and not self._stopping

    def room(self) -> int:
        """How many more sends this dispatcher takes now (the router hands it rows it claimed for it)."""
        return max(0, self.max_in_flight - len(self._in_flight)) if self.running else 0

    def take(self, rows: list[dict[str, Any]]) -> None:
        """Send rows another part of this process already claimed for this dispatcher (``locked_by`` is our id),
        in the same transaction that wrote them: no claim round trip, no wait for the next poll. If the process
        dies first, they are claimed rows of a dead process and go out after a restart (``recover_orphans``)."""
        self._start(rows)

    async def claim(self, limit: int) -> list[dict[str, Any]]:
        now = self.clock.now()
        async with self.engine.begin() as conn:
            sqlite = is_sqlite(conn)
            ids: list[int] = []
            if time.monotonic() >= self._next_expiry_check:
                self._next_expiry_check = time.monotonic() + min(EXPIRY_CHECK_SECONDS,
                                                                 self.lease.total_seconds() / 2)
                stmt = _EXPIRED_SQLITE if sqlite else _EXPIRED_PG
                expired = (await conn.execute(stmt, {"now": now, "n": limit})).all()
                if expired:
                    log.warning("taking over %d sends whose lease ran out (messages %s, held by %s)", len(expired),
                                [r[2] for r in expired[:20]], sorted({r[1] for r in expired if r[1]}))
                ids = [r[0] for r in expired]
            if len(ids) < limit:
                stmt = _CLAIMABLE_SQLITE if sqlite else _CLAIMABLE_PG
                ids += [r[0] for r in (await conn.execute(stmt, {"now": now, "n": limit - len(ids)})).all()]
            if not ids:
                return []
            await conn.execute(_MARK_CLAIMED, {"ids": ids, "by": self.worker_id, "until": now + self.lease})
            rows = (await conn.execute(_CLAIMED_ROWS, {"ids": ids})).mappings().all()
        return [dict(r) for r in rows]

    def _outbound(self, row: dict[str, Any]) -> OutboundMessage:
        meta = row["meta"] or {}
        reply = Reply.from_payload(meta.get("reply") or {"text": row["body"]})
        return OutboundMessage(
            message_id=row["message_id"],
            conversation_id=row["conversation_id"],
            customer_id=row["customer_id"],
            channel=row["channel"],
            address=row["address"],
            reply=reply,
            identity_meta=dict(row["identity_meta"] or {}),
            last_inbound_at=aware(row["last_inbound_at"]),
            thread=dict((row["conversation_meta"] or {}).get("thread") or {}),
        )

    async def _send_one(self, row: dict[str, Any]) -> None:
        channel = self.channels.get(row["channel"])
        result: Any
        if channel is None:
            result = PermanentSendError(
                f"the {row['channel']} channel is not configured on this server; set its settings (see README)"
            )
        elif row["unreachable"]:
            result = PermanentSendError("the customer cannot be reached on this channel (marked unreachable)")
        else:
            try:
                fault("before_send")
                result = await asyncio.wait_for(channel.send(self._outbound(row)), timeout=self.send_timeout)
                fault("after_send")
            except SendError as exc:
                result = exc
            except TimeoutError:
                result = TransientSendError("the channel did not answer in time", ambiguous=True)
            except Exception as exc:  # noqa: BLE001 - a channel bug must not kill the dispatcher
                log.exception("channel %s raised while sending message %s", row["channel"], row["message_id"])
                result = TransientSendError(f"{type(exc).__name__}: {exc}")
        await self._results.put((row, result))

    async def _record_loop(self) -> None:
        """Write send results in batches; a ``None`` in the queue means: finish what is queued, then stop."""
        done = False
        while not done:
            first = await self._results.get()
            batch: list[tuple[dict[str, Any], Any]] = []
            if first is None:
                done = True
            else:
                batch.append(first)
                if not self._maybe_waiting and self._results.qsize() < RECORD_WINDOW_BELOW:
                    await asyncio.sleep(RECORD_WINDOW_SECONDS)
            while not self._results.empty() and len(batch) < 256:
                item = self._results.get_nowait()
                if item is None:
                    done = True
                else:
                    batch.append(item)
            for attempt in range(5):
                if not batch:
                    break
                try:
                    await self._record(batch)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - if it keeps failing the lease expires and rows are retried
                    log.exception("recording %s send results failed (attempt %s)", len(batch), attempt + 1)
                    await asyncio.sleep(0.2 * (attempt + 1))

    async def _record(self, batch: list[tuple[dict[str, Any], Any]]) -> None:
        now = self.clock.now()
        events: list[tuple[str, dict[str, Any]]] = []
        outcomes: list[tuple[dict[str, Any], str]] = []
        async with write_only(self.engine) as conn:  # PostgreSQL: one statement, no BEGIN/COMMIT round trips
            for row, result in batch:
                base = {"conversation_id": row["conversation_id"], "customer_id": row["customer_id"],
                        "message_id": row["message_id"], "channel": row["channel"]}
                if isinstance(result, ProviderReceipt):
                    await update_row(conn, outbox_items, row["outbox_id"], {
                        "status": "sent", "sent_at": now, "locked_until": None,
                        "provider_message_id": result.provider_message_id, "last_error": None})
                    await update_row(conn, messages, row["message_id"], {
                        "status": result.status, "channel_message_id": result.provider_message_id, "sent_at": now,
                        "delivered_at": now if result.status == "delivered" else None, "error": None})
                    await add_touchpoint(
                        conn, customer_id=row["customer_id"], conversation_id=row["conversation_id"],
                        message_id=row["message_id"], kind="delivery", now=now, channel=row["channel"],
                        payload={"status": result.status, "provider_message_id": result.provider_message_id,
                                 **result.detail},
                    )
                    events.append(("message.status", {**base, "status": result.status}))
                    self.sent += 1
                    outcomes.append((row, "sent"))
                    continue
                assert isinstance(result, SendError)
                age = now - (aware(row["queued_at"]) or now)
                give_up = isinstance(result, PermanentSendError) or (
                    row["attempts"] >= self.max_attempts or age >= self.max_age
                )
                if give_up:
                    reason = result.reason
                    if isinstance(result, TransientSendError):
                        reason = f"gave up after {row['attempts']} attempts: {result.reason}"
                    await update_row(conn, outbox_items, row["outbox_id"],
                                     {"status": "failed", "locked_until": None, "last_error": reason})
                    await update_row(conn, messages, row["message_id"], {"status": "failed", "error": reason})
                    if isinstance(result, PermanentSendError) and result.unreachable:
                        await update_row(conn, identities, row["identity_id"],
                                         {"unreachable": True, "unreachable_reason": reason})
                    await add_touchpoint(
                        conn, customer_id=row["customer_id"], conversation_id=row["conversation_id"],
                        message_id=row["message_id"], kind="delivery", now=now, channel=row["channel"],
                        payload={"status": "failed", "error": reason, "code": result.code},
                    )
                    events.append(("message.status", {**base, "status": "failed", "error": reason}))
                    log.warning("message %s failed on %s: %s", row["message_id"], row["channel"], reason,
                                extra={"conversation_id": row["conversation_id"], "message_id": row["message_id"]})
                    outcomes.append((row, "failed"))
                else:
                    delay = backoff_delay(row["attempts"], self.backoff_base, self.backoff_cap)
                    if isinstance(result, TransientSendError) and result.retry_after is not None:
                        delay = max(delay, result.retry_after)
                    await update_row(conn, outbox_items, row["outbox_id"], {
                        "status": "pending", "locked_until": None, "last_error": result.reason,
                        "next_attempt_at": now + timedelta(seconds=delay)})
                    await update_row(conn, messages, row["message_id"], {"error": result.reason})
                    asyncio.get_running_loop().call_later(delay, self.nudge)
                    outcomes.append((row, "retry"))
        for row, outcome in outcomes:
            for hook in self.on_result:
                hook(row, outcome, now)
        if events:
            await self.publish(events)
        if self._maybe_waiting:
            self.wakeup.set()
