"""Outgoing webhooks: ``message.created``, ``conversation.status_changed``, ``appointment.updated``.

* **Durable**: an event sink (``rt.pipeline.event_sinks``) writes one ``webhook_deliveries`` row per matching
  subscription in the *same transaction* as the effects that caused the event, so an event is never lost
  between "the database changed" and "the webhook was queued" (Chatwoot's fire-and-forget complaint).
* **Delivered** by a background task in worker processes: rows are claimed with ``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL (any number of workers), POSTed as JSON, and retried with capped exponential backoff and full
  jitter (``Retry-After`` honoured) until a 2xx or ``LOKET_WEBHOOK_MAX_ATTEMPTS`` (default 12) — then
  ``failed``, still visible and re-deliverable through ``POST /api/v1/webhooks/{id}/deliveries/{d}/retry``.
* **Signed**: ``X-Loket-Timestamp: <unix seconds>`` and ``X-Loket-Signature: sha256=<hex>`` where the hex is
  ``HMAC-SHA256(secret, f"{timestamp}.{body}")``. ``X-Loket-Delivery`` is stable across retries (dedupe on it).
* Every attempt is logged on the row (time, status code, error, duration; the newest 20).

Appointment events (``appointment.status_changed``, ``appointment.moved`` …) go out as ``appointment.updated``
with the original name in ``data.change``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.api.models import webhook_deliveries, webhook_subscriptions
from bot.dispatcher import backoff_delay

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("loket.webhooks")

EVENTS = ("message.created", "conversation.status_changed", "appointment.updated")
LOG_KEEP = 20


def public_event(name: str) -> str | None:
    if name in EVENTS:
        return name
    if name.startswith("appointment."):
        return "appointment.updated"
    return None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None,
           tolerance: float = 300) -> bool:
    """What a receiver does: constant-time compare, and refuse stale timestamps (replays)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSender:
    def __init__(self, rt: Runtime) -> None:
        env = rt.settings.env
        self.rt = rt
        self.max_attempts = int(env.get("LOKET_WEBHOOK_MAX_ATTEMPTS", "12"))
        self.backoff_base = float(env.get("LOKET_WEBHOOK_BACKOFF_BASE", "2"))
        self.backoff_cap = float(env.get("LOKET_WEBHOOK_BACKOFF_CAP", "3600"))
        self.timeout = float(env.get("LOKET_WEBHOOK_TIMEOUT", "10"))
        self.lease = timedelta(seconds=max(30.0, self.timeout * 3))
        self.poll = float(env.get("LOKET_WEBHOOK_POLL", "0.5"))
        self.concurrency = int(env.get("LOKET_WEBHOOK_CONCURRENCY", "16"))
        self.cache_ttl = float(env.get("LOKET_WEBHOOK_CACHE_SECONDS", "2"))
        self._subs: list[tuple[int, frozenset[str]]] = []
        self._subs_at = -1e9
        self._wake = asyncio.Event()
        self._stopping = False
        self.delivered = 0
        self.failed = 0
        self.retried = 0

    # ----------------------------------------------------------------- enqueue (inside the effects' transaction)
    def invalidate(self) -> None:
        self._subs_at = -1e9

    async def _subscriptions(self, conn: AsyncConnection) -> list[tuple[int, frozenset[str]]]:
        if time.monotonic() - self._subs_at > self.cache_ttl:
            rows = (await conn.execute(select(webhook_subscriptions.c.id, webhook_subscriptions.c.events)
                                       .where(webhook_subscriptions.c.active.is_(True)))).all()
            self._subs = [(int(r[0]), frozenset(r[1] or [])) for r in rows]
            self._subs_at = time.monotonic()
        return self._subs

    async def sink(self, conn: AsyncConnection, name: str, payload: dict[str, Any], now: Any) -> None:
        event = public_event(name)
        if event is None:
            return
        subs = [sid for sid, events in await self._subscriptions(conn) if event in events]
        if not subs:
            return
        data = dict(payload)
        if event != name:
            data["change"] = name
        body = {"event": event, "occurred_at": now.isoformat(), "data": data}
        await conn.execute(webhook_deliveries.insert(), [
            {"subscription_id": sid, "event": event, "payload": json.loads(json.dumps(body, default=str)),
             "status": "pending", "attempts": 0, "next_attempt_at": now, "locked_until": None,
             "last_status_code": None, "last_error": None, "log": [], "created_at": now, "delivered_at": None}
            for sid in subs
        ])

    # ----------------------------------------------------------------- deliver (background task)
    def nudge(self) -> None:
        self._wake.set()

    async def _on_event(self, name: str, payload: dict[str, Any]) -> None:
        if name == "webhooks.changed":
            self.invalidate()
        elif (event := public_event(name)) and self._may_be_subscribed(event):
            self.nudge()

    def _may_be_subscribed(self, event: str) -> bool:
        """False only when the fresh subscription cache says nobody wants ``event`` (then there is nothing to
        deliver from this process; rows another process stored are found by the next poll)."""
        if time.monotonic() - self._subs_at > self.cache_ttl:
            return True
        return any(event in events for _, events in self._subs)

    async def claim(self, limit: int) -> list[dict[str, Any]]:
        now = self.rt.clock.now()
        d = webhook_deliveries
        due = or_(and_(d.c.status == "pending", d.c.next_attempt_at <= now),
                  and_(d.c.status == "delivering", d.c.locked_until < now))
        q = select(d.c.id).where(due).order_by(d.c.id).limit(limit)
        if not self.rt.settings.is_sqlite:
            q = q.with_for_update(skip_locked=True)
        async with self.rt.engine.begin() as conn:
            ids = [r[0] for r in (await conn.execute(q)).all()]
            if not ids:
                return []
            await conn.execute(update(d).where(d.c.id.in_(ids))
                               .values(status="delivering", locked_until=now + self.lease))
            rows = (await conn.execute(
                select(d, webhook_subscriptions.c.url, webhook_subscriptions.c.secret,
                       webhook_subscriptions.c.active)
                .join(webhook_subscriptions, webhook_subscriptions.c.id == d.c.subscription_id)
                .where(d.c.id.in_(ids)).order_by(d.c.id)
            )).mappings().all()
        return [dict(r) for r in rows]

    async def deliver(self, session: aiohttp.ClientSession, row: dict[str, Any]) -> None:
        body = json.dumps({"id": f"dlv_{row['id']}", **row["payload"]}, separators=(",", ":")).encode()
        ts = str(int(self.rt.clock.now().timestamp()))
        headers = {"Content-Type": "application/json", "User-Agent": "Loket-Webhooks/1.0",
                   "X-Loket-Event": row["event"], "X-Loket-Delivery": f"dlv_{row['id']}",
                   "X-Loket-Timestamp": ts, "X-Loket-Signature": sign(row["secret"], ts, body)}
        started = time.monotonic()
        status: int | None = None
        err: str | None = None
        retry_after: float | None = None
        if not row["active"]:
            err = "subscription is disabled"
        else:
            try:
                async with session.post(row["url"], data=body, headers=headers, allow_redirects=False) as resp:
                    status = resp.status
                    await resp.read()
                    if status == 429 or status >= 500:
                        try:
                            retry_after = float(resp.headers.get("Retry-After", ""))
                        except ValueError:
                            retry_after = None
                    if not 200 <= status < 300:
                        err = f"HTTP {status}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                err = f"{type(exc).__name__}: {str(exc)[:200]}"
        now = self.rt.clock.now()
        attempts = int(row["attempts"]) + 1
        entry = {"at": now.isoformat(), "status_code": status, "error": err,
                 "ms": round((time.monotonic() - started) * 1000, 1)}
        values: dict[str, Any] = {"attempts": attempts, "last_status_code": status, "last_error": err,
                                  "log": ([*(row["log"] or []), entry])[-LOG_KEEP:], "locked_until": None}
        metrics = self.rt.services.get("metrics")
        if err is None:
            values.update(status="delivered", delivered_at=now)
            self.delivered += 1
        elif attempts >= self.max_attempts or not row["active"]:
            values.update(status="failed")
            self.failed += 1
            log.warning("webhook delivery %s to subscription %s failed for good after %d attempts: %s",
                        row["id"], row["subscription_id"], attempts, err)
        else:
            delay = backoff_delay(attempts, self.backoff_base, self.backoff_cap)
            if retry_after is not None:
                delay = min(max(delay, retry_after), self.backoff_cap)
            values.update(status="pending", next_attempt_at=now + timedelta(seconds=delay))
            self.retried += 1
        if metrics is not None:
            metrics.webhook_attempt(row["event"], "ok" if err is None else values["status"])
        async with self.rt.engine.begin() as conn:
            await conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.id == row["id"]).values(**values))

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        sem = asyncio.Semaphore(self.concurrency)

        async def one(session: aiohttp.ClientSession, row: dict[str, Any]) -> None:
            async with sem:
                try:
                    await self.deliver(session, row)
                except Exception:  # noqa: BLE001 - the lease expires and the row is retried
                    log.exception("webhook delivery %s could not be recorded", row["id"])

        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._stopping:
                try:
                    rows = await self.claim(self.concurrency * 2)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - database blip: try again shortly
                    log.warning("webhook claim failed; retrying", exc_info=True)
                    rows = []
                    await asyncio.sleep(1 + random.random())
                if rows:
                    await asyncio.gather(*(one(session, r) for r in rows))
                    continue
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll)
                except TimeoutError:
                    pass


def setup(rt: Runtime) -> None:
    sender = WebhookSender(rt)
    rt.services["webhooks"] = sender
    rt.services["webhooks_nudge"] = sender.nudge
    rt.pipeline.event_sinks.append(sender.sink)
    rt.events.subscribe(sender._on_event)
    rt.add_task("webhooks-out", sender.run)
