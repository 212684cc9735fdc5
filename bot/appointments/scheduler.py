"""The reminder scheduler: due reminders → outbound messages, exactly once per (appointment, stage).

How "exactly once" holds with several workers, restarts and crashes:

1. **Claim** (own short transaction): due rows (``pending``/``deferred`` with ``due_at <= now``, or ``sending``
   whose lease expired) are locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and marked ``sending`` with
   ``locked_by``/``locked_until``. SQLite has one writer at a time, so the same statements are safe there.
2. **Send** (one transaction per batch, a savepoint per reminder): the outbound message and its outbox row are
   written through the core pipeline, and the reminder is marked ``sent`` with
   ``WHERE status = 'sending' AND locked_by = me``. If that matches no row (our lease expired and another
   worker took the reminder) the savepoint rolls back and nothing is written. The outbox row and the reminder
   state commit together; the dispatcher sends the outbox row once.
3. A crash between 1 and 2 leaves the row ``sending``; after the lease another worker claims it again.

The same loop defers reminders that fall in quiet hours, skips those that make no sense any more (opt-out,
cancelled, started), falls back to another channel after a failed delivery and queues unanswered
appointments for staff when the reply deadline passes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.appointments.models import appointments_t, providers_t, reminders_t, services_t
from bot.appointments.service import (
    CHANNEL_ORDER,
    OPEN_STATUSES,
    Policy,
    format_when,
    ics_calendar,
    quiet_until,
    tr,
)
from bot.attachments import AttachmentStore
from bot.clock import aware
from bot.effects import SetState, Touch
from bot.messages import Choice, Reply
from bot.pipeline import ApplyContext
from storage.db import is_sqlite
from storage.models import conversations, customers, identities, messages
from storage.repositories import add_touchpoint
from storage.unit_of_work import unit_of_work

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("loket.appointments")


class _LostClaim(Exception):
    """Our lease on the reminder ended and another worker holds it: write nothing."""


class TokenBucket:
    """Reminders queued per second (per worker process); ``rate <= 0`` means unlimited."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def available(self) -> int:
        if self.rate <= 0:
            return 1 << 30
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return int(self.tokens)

    def take(self, n: int) -> None:
        if self.rate > 0:
            self.tokens -= n

    def wait_time(self) -> float:
        return 0.0 if self.rate <= 0 else max(0.001, (1 - self.tokens) / self.rate)


def reminder_choices(lang: str) -> tuple[Choice, ...]:
    return (Choice(tr("confirm", lang), "confirm"), Choice(tr("reschedule", lang), "reschedule"),
            Choice(tr("cancel", lang), "cancel"))


class ReminderScheduler:
    def __init__(self, rt: Runtime, policy: Policy) -> None:
        self.rt = rt
        self.policy = policy
        self.worker_id = f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.bucket = TokenBucket(policy.rate)
        self.wakeup = asyncio.Event()
        self.fallback_due = True
        self._last_fallback_sweep = 0.0
        self.sent = 0
        self.cpu_seconds = 0.0  # thread CPU spent in the scheduler's own code (for the benchmark)
        self.store = AttachmentStore(rt.settings.data_dir)

    def nudge(self) -> None:
        self.wakeup.set()

    async def on_event(self, name: str, payload: dict[str, Any]) -> None:
        if name == "message.status" and payload.get("status") == "failed":
            self.fallback_due = True
            self.nudge()

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        """``concurrency`` consumers (PostgreSQL; one on SQLite) share the rate; the first also runs the sweeps."""
        n = 1 if is_sqlite(self.rt.engine) else max(1, self.policy.concurrency)
        await asyncio.gather(*(self._consume(i == 0) for i in range(n)))

    async def _consume(self, sweeps: bool) -> None:
        while True:
            try:
                n = await self.tick(sweeps=sweeps)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broken DB connection must not end the scheduler
                log.exception("reminder scheduler tick failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if n > 0:
                if self.bucket.rate > 0 and self.bucket.available() < 1:
                    await asyncio.sleep(self.bucket.wait_time())
                continue
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=self.policy.poll)
            except TimeoutError:
                pass

    async def tick(self, sweeps: bool = True) -> int:
        """One round: sweeps, then claim and handle up to a batch of due reminders. Returns reminders handled."""
        if sweeps:
            if self.fallback_due or time.monotonic() - self._last_fallback_sweep > 10:
                self.fallback_due = False
                self._last_fallback_sweep = time.monotonic()
                await self.fallback_sweep()
            await self.deadline_sweep()
        room = min(self.policy.batch, self.bucket.available())
        if room <= 0:
            await asyncio.sleep(self.bucket.wait_time())
            return 0
        self.bucket.take(room)  # reserve before the await so concurrent consumers share the rate
        ids = await self.claim(room)
        sent = await self.process(ids) if ids else 0
        self.bucket.take(sent - room)  # give back what was not sent
        return len(ids)

    # ------------------------------------------------------------------ claim
    async def claim(self, limit: int) -> list[int]:
        now = self.rt.clock.now()
        due = or_(
            and_(reminders_t.c.status.in_(("pending", "deferred")), reminders_t.c.due_at <= now),
            and_(reminders_t.c.status == "sending", reminders_t.c.locked_until < now),
        )
        async with self.rt.engine.begin() as conn:
            q = select(reminders_t.c.id).where(due).order_by(reminders_t.c.due_at, reminders_t.c.id).limit(limit)
            if not is_sqlite(conn):
                q = q.with_for_update(skip_locked=True)
            ids = [r[0] for r in (await conn.execute(q)).all()]
            if ids:
                await conn.execute(update(reminders_t).where(reminders_t.c.id.in_(ids)).values(
                    status="sending", locked_by=self.worker_id, locked_until=now + self.policy.lease,
                    attempts=reminders_t.c.attempts + 1, updated_at=now))
        return ids

    # ------------------------------------------------------------------ handle a claimed batch
    async def process(self, ids: list[int]) -> int:
        """Handle claimed reminders in one transaction; on an unexpected error, again one by one (savepoints)."""
        t0 = time.thread_time()
        try:
            try:
                return await self._process(ids, isolate=False)
            except Exception:  # noqa: BLE001 - find the bad one without holding up the others
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # shutting down: the claimed rows go back after their lease
                log.warning("a reminder batch failed; handling its %d reminders one by one", len(ids), exc_info=True)
                return await self._process(ids, isolate=True)
        finally:
            self.cpu_seconds += time.thread_time() - t0

    async def _process(self, ids: list[int], isolate: bool) -> int:
        rt = self.rt
        now = rt.clock.now()
        events: list[tuple[str, dict[str, Any]]] = []
        sent = 0
        async with rt.engine.begin() as conn, unit_of_work(conn) as uow:
            uow.expect[messages] = len(ids)  # one reminder message each: one id round trip (PostgreSQL)
            q = select(reminders_t).where(reminders_t.c.id.in_(ids), reminders_t.c.status == "sending",
                                          reminders_t.c.locked_by == self.worker_id).order_by(reminders_t.c.id)
            if not is_sqlite(conn):
                # Hold the rows for this transaction, waiting for a lock held elsewhere: another worker's claim
                # (SKIP LOCKED) keeps a lock on a row it re-checked and did not take until it commits. Skipping
                # such a row would leave it "sending" until its lease ran out. After the wait PostgreSQL checks
                # the row again, so one another worker took over after our lease expired is left out. Rows are
                # locked in id order: two workers never wait for each other in a circle.
                q = q.with_for_update()
            rems = [dict(r) for r in (await conn.execute(q)).mappings()]
            if not rems:
                return 0
            appts = {r["id"]: dict(r) for r in (await conn.execute(select(appointments_t).where(
                appointments_t.c.id.in_({r["appointment_id"] for r in rems})))).mappings()}
            cust_ids = {a["customer_id"] for a in appts.values()}
            custs = {r["id"]: dict(r) for r in (await conn.execute(
                select(customers).where(customers.c.id.in_(cust_ids)))).mappings()}
            idents: dict[int, list[dict[str, Any]]] = {}
            for r in (await conn.execute(select(identities).where(identities.c.customer_id.in_(cust_ids))
                                         .order_by(identities.c.id.desc()))).mappings():
                idents.setdefault(r["customer_id"], []).append(dict(r))
            svcs = {r["id"]: dict(r) for r in (await conn.execute(select(services_t).where(
                services_t.c.id.in_({a["service_id"] for a in appts.values()})))).mappings()}
            provs = {r["id"]: dict(r) for r in (await conn.execute(select(providers_t).where(
                providers_t.c.id.in_({a["provider_id"] for a in appts.values()})))).mappings()}
            for rem in rems:
                appt = appts[rem["appointment_id"]]
                cust = custs[appt["customer_id"]]
                # merged customers: identities moved to the surviving record
                if cust.get("merged_into_id"):
                    cust = dict((await conn.execute(select(customers).where(
                        customers.c.id == cust["merged_into_id"]))).mappings().one())
                    idents.setdefault(cust["id"], [dict(r) for r in (await conn.execute(
                        select(identities).where(identities.c.customer_id == cust["id"]))).mappings()])
                args = (conn, now, rem, appt, cust, idents.get(cust["id"], []), svcs[appt["service_id"]],
                        provs[appt["provider_id"]])
                if not isolate:
                    sent += int(await self._handle(*args, events))
                    continue
                item_events: list[tuple[str, dict[str, Any]]] = []
                try:
                    # the savepoint's writes are its own unit of work: dropped with it if it rolls back
                    async with conn.begin_nested(), unit_of_work(conn):
                        did_send = await self._handle(*args, item_events)
                except Exception:  # noqa: BLE001 - one bad reminder must not hold up the batch
                    log.exception("reminder %s could not be handled; it will be retried after its lease",
                                  rem["id"])
                    continue
                events.extend(item_events)
                sent += int(did_send)
            await rt.pipeline.run_sinks(conn, events, now)
        if events:
            await rt.events.publish(events)
            rt.dispatcher.nudge()
        self.sent += sent
        return sent

    async def _finish(self, conn: AsyncConnection, rem: dict[str, Any], now: datetime, **values: Any) -> None:
        res = await conn.execute(update(reminders_t).where(
            reminders_t.c.id == rem["id"], reminders_t.c.status == "sending",
            reminders_t.c.locked_by == self.worker_id,
        ).values(locked_by=None, locked_until=None, updated_at=now, **values))
        if res.rowcount != 1:
            raise _LostClaim()

    async def _handle(self, conn: AsyncConnection, now: datetime, rem: dict[str, Any], appt: dict[str, Any],
                      cust: dict[str, Any], idents: list[dict[str, Any]], service: dict[str, Any],
                      provider: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> bool:
        start = aware(appt["start_at"])
        assert start is not None
        if appt["status"] not in OPEN_STATUSES:
            await self._finish(conn, rem, now, status="skipped", reason=f"appointment {appt['status']}")
            return False
        if start <= now:
            await self._finish(conn, rem, now, status="skipped", reason="the appointment has already started")
            return False
        if cust["opted_out"]:
            await self._finish(conn, rem, now, status="skipped", reason="customer opted out of messages")
            await add_touchpoint(conn, customer_id=cust["id"], kind="reminder_skipped", now=now,
                                 payload={"appointment_id": appt["id"], "stage": rem["stage"],
                                          "reason": "opted_out"})
            return False
        local_now = now.astimezone(ZoneInfo(appt["timezone"]))
        until = quiet_until(local_now, self.policy.quiet)
        if until is not None:
            until_utc = until.astimezone(UTC)
            if until_utc < start:
                await self._finish(conn, rem, now, status="deferred", due_at=until_utc,
                                   reason=f"quiet hours in {appt['timezone']} until {until.strftime('%H:%M')}")
            else:
                await self._finish(conn, rem, now, status="skipped",
                                   reason="quiet hours last until the appointment")
            return False
        tried = {f.get("channel") for f in rem["fallback"] or [] if f.get("error")}
        lang = appt["language"] or cust["language"] or "id"
        name = cust["display_name"] or ("Bapak/Ibu" if lang == "id" else "there")
        when = format_when(start, appt["timezone"], lang)
        location = appt["location"] or provider["location"] or provider["name"]
        meta = {"appointment_id": appt["id"], "reminder_id": rem["id"], "stage": rem["stage"]}
        base = Reply(
            tr("reminder", lang, name=name, service=service["name"], provider=provider["name"], when=when,
               location=location),
            choices=reminder_choices(lang),
            purpose="appointment_reminder",
            template_variables={"1": name, "2": when, "3": location},
            meta=meta,
        )
        skipped: list[dict[str, Any]] = []
        for ident in self._candidates(appt, idents):
            if ident["channel"] in tried:
                continue
            reply = base
            if ident["channel"] == "email":
                ics = ics_calendar(appt, service, provider, self.rt.services.get("org_name", "Loket"), now)
                att = await asyncio.to_thread(self.store.save, ics.encode(), "janji-temu.ics", "text/calendar")
                reply = Reply(base.text, choices=base.choices, purpose=base.purpose, attachments=(att,),
                              template_variables=base.template_variables,
                              meta={**meta, "subject": tr("ics_subject", lang, service=service["name"])})
            channel = self.rt.channels.get(ident["channel"])
            precheck = getattr(channel, "precheck", None)
            problem = precheck(reply, ident, now) if precheck else None
            if problem:
                skipped.append({"channel": ident["channel"], "error": problem, "at": now.isoformat()})
                continue
            conv, _, _ = await self.rt.pipeline.open_conversation(conn, ident, cust, now)
            actx = ApplyContext(conn=conn, now=now, customer_id=cust["id"], conversation_id=conv["id"],
                                identity=ident, channel=ident["channel"], message_id=None, events=events)
            msg_id = await self.rt.pipeline.send(actx, reply)
            conv_meta = dict(conv["meta"] or {})
            conv_meta["appointment"] = {"appointment_id": appt["id"], "reminder_id": rem["id"], "mode": "reminder",
                                        "start": start.isoformat()}
            await conn.execute(update(conversations).where(conversations.c.id == conv["id"]).values(meta=conv_meta))
            await add_touchpoint(conn, customer_id=cust["id"], conversation_id=conv["id"], message_id=msg_id,
                                 kind="reminder_sent", now=now, channel=ident["channel"],
                                 payload={"appointment_id": appt["id"], "stage": rem["stage"],
                                          "fallback": bool(tried)})
            await self._finish(conn, rem, now, status="sent", channel=ident["channel"], message_id=msg_id,
                               conversation_id=conv["id"], sent_at=now, reason=rem["reason"] if tried else None,
                               fallback=list(rem["fallback"] or []) + skipped)
            return True
        reason = "no reachable channel left" if tried else "the customer has no reachable channel"
        await self._finish(conn, rem, now, status="failed", reason=reason,
                           fallback=list(rem["fallback"] or []) + skipped)
        await add_touchpoint(conn, customer_id=cust["id"], kind="reminder_failed", now=now,
                             payload={"appointment_id": appt["id"], "stage": rem["stage"], "reason": reason})
        return False

    def _candidates(self, appt: dict[str, Any], idents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Reachable identities on configured channels: the appointment's channel first, then the usual order."""
        order = ([appt["channel"]] if appt["channel"] else []) + [c for c in CHANNEL_ORDER if c != appt["channel"]]
        out = []
        for ch in order:
            if self.rt.channels.get(ch) is None:
                continue
            for ident in idents:  # newest first
                if ident["channel"] == ch and not ident["unreachable"]:
                    out.append(ident)
                    break
        return out

    # ------------------------------------------------------------------ failed delivery → next channel
    async def fallback_sweep(self) -> int:
        now = self.rt.clock.now()
        async with self.rt.engine.begin() as conn:
            rows = (await conn.execute(
                select(reminders_t.c.id, reminders_t.c.message_id, reminders_t.c.channel, reminders_t.c.fallback,
                       messages.c.error)
                .select_from(reminders_t.join(messages, messages.c.id == reminders_t.c.message_id))
                .where(reminders_t.c.status == "sent", messages.c.status == "failed",
                       reminders_t.c.sent_at >= now - timedelta(days=3))
                .limit(500)
            )).all()
            for r in rows:
                entry = {"channel": r.channel, "message_id": r.message_id, "error": r.error or "delivery failed",
                         "at": now.isoformat()}
                await conn.execute(update(reminders_t).where(
                    reminders_t.c.id == r.id, reminders_t.c.status == "sent", reminders_t.c.message_id == r.message_id
                ).values(status="pending", due_at=now, message_id=None, sent_at=None,
                         fallback=list(r.fallback or []) + [entry],
                         reason=f"fallback after failed delivery on {r.channel}", updated_at=now))
        if rows:
            log.info("%d reminders failed on their channel; trying the next one", len(rows))
            self.nudge()
        return len(rows)

    # ------------------------------------------------------------------ no reply by the deadline → staff
    async def deadline_sweep(self) -> int:
        if self.policy.reply_deadline <= timedelta(0):
            return 0
        rt = self.rt
        now = rt.clock.now()
        handled = 0
        async with rt.engine.begin() as conn:
            q = (
                select(appointments_t.c.id, appointments_t.c.customer_id, reminders_t.c.conversation_id,
                       reminders_t.c.stage)
                .select_from(appointments_t.join(reminders_t, reminders_t.c.appointment_id == appointments_t.c.id))
                .where(appointments_t.c.status.in_(("booked", "rescheduled")),
                       appointments_t.c.escalated_at.is_(None),
                       appointments_t.c.start_at > now,
                       appointments_t.c.start_at <= now + self.policy.reply_deadline,
                       reminders_t.c.status == "sent", reminders_t.c.outcome.is_(None),
                       reminders_t.c.conversation_id.is_not(None))
                .order_by(appointments_t.c.start_at)
                .limit(100)
            )
            if not is_sqlite(conn):
                q = q.with_for_update(skip_locked=True, of=appointments_t)
            rows = (await conn.execute(q)).all()
            done: set[int] = set()
            events: list[tuple[str, dict[str, Any]]] = []
            for r in rows:
                if r.id in done:
                    continue
                done.add(r.id)
                await conn.execute(update(appointments_t).where(appointments_t.c.id == r.id)
                                   .values(escalated_at=now, updated_at=now))
                conv = (await conn.execute(select(conversations).where(
                    conversations.c.id == r.conversation_id))).mappings().first()
                if conv is None:
                    continue
                ident = dict((await conn.execute(select(identities).where(
                    identities.c.id == conv["identity_id"]))).mappings().one())
                effects: list[Any] = [Touch("appointment_no_reply", {"appointment_id": r.id, "stage": r.stage},
                                            actor="scheduler")]
                if conv["state"] not in ("queued", "assigned"):
                    effects.insert(0, SetState("queued", reason="no_reply_to_reminder", team=self.policy.team,
                                               details={"appointment_id": r.id}))
                actx = ApplyContext(conn=conn, now=now, customer_id=conv["customer_id"], conversation_id=conv["id"],
                                    identity=ident, channel=conv["channel"], message_id=None, events=events)
                await rt.pipeline.apply(actx, effects, state_before=conv["state"])
                handled += 1
            await rt.pipeline.run_sinks(conn, events, now)
        if events:
            await rt.events.publish(events)
        return handled
