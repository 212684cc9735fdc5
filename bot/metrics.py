"""Prometheus ``/metrics`` (DESIGN §11).

Counters and the latency histogram live in a per-process registry: each process counts what happened in it
(events fanned out from other processes through Redis are not counted again), so summing a counter over all
instances gives the fleet's total. ``loket web`` and ``loket run`` serve ``/metrics`` on ``LOKET_PORT``,
``loket worker`` on ``LOKET_WORKER_METRICS_PORT`` (default 9108). Queue depth and age, SLA breaches and webhook
backlog are read from the database at scrape time, so every process reports the same truth for them.

Set ``LOKET_METRICS_TOKEN`` to require ``Authorization: Bearer <token>`` on ``/metrics``.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from sqlalchemy import func, select

from bot.clock import aware
from storage.models import PENDING, UNSENT, conversations, inbox_items, outbox_items

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("loket.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter("loket_messages", "Messages created, per channel and direction (in/out).",
                                ["channel", "direction"], registry=r)
        self.dispatch = Counter("loket_dispatch_results", "Outbound send results: sent, retry or failed.",
                                ["channel", "outcome"], registry=r)
        self.retries = Counter("loket_dispatch_retries", "Outbound sends scheduled for another attempt.",
                               ["channel"], registry=r)
        self.failures = Counter("loket_dispatch_failures", "Outbound sends given up for good.", ["channel"],
                                registry=r)
        self.latency = Histogram("loket_dispatch_latency_seconds",
                                 "From reply queued to the provider accepting it.", ["channel"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.escalations = Counter("loket_escalations", "Conversations handed over to humans (state → queued).",
                                   ["reason"], registry=r)
        self.status_changes = Counter("loket_conversation_status_changes", "Conversation state changes.",
                                      ["to"], registry=r)
        self.webhooks = Counter("loket_webhook_attempts", "Outgoing webhook attempts by result.",
                                ["event", "result"], registry=r)
        self.breaches = Counter("loket_sla_breaches_detected", "Conversations found past an SLA due time "
                                "(each counted once, by the process that found it).", registry=r)
        self.statuses = Counter("loket_message_status_updates", "Delivery status changes of outbound messages "
                                "(sends recorded and provider callbacks).", ["channel", "status"], registry=r)
        self.pruned = Counter("loket_rows_pruned", "Finished queue rows deleted by the retention pass.", ["table"],
                              registry=r)
        self.upkeep = Counter("loket_db_upkeep", "PostgreSQL tables analysed or vacuumed by Loket's upkeep pass.",
                              ["table", "action"], registry=r)
        Gauge("loket_process_info", "This Loket process (always 1): its role.", ["role"],
              registry=r).labels(rt.role).set(1)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, …

    # --------------------------------------------------------------------- feeds
    async def on_event(self, name: str, payload: dict[str, Any]) -> None:
        if name == "message.created":
            self.messages.labels(str(payload.get("channel")), str(payload.get("direction"))).inc()
        elif name == "conversation.status_changed":
            to = str(payload.get("to"))
            self.status_changes.labels(to).inc()
            if to == "queued":
                self.escalations.labels(str(payload.get("reason") or "unknown")[:40]).inc()
        elif name == "conversation.sla_breached":
            self.breaches.inc()
        elif name == "message.status":
            self.statuses.labels(str(payload.get("channel")), str(payload.get("status"))).inc()

    def on_dispatch(self, row: dict[str, Any], outcome: str, now: Any) -> None:
        channel = str(row.get("channel"))
        self.dispatch.labels(channel, outcome).inc()
        if outcome == "sent":
            queued = aware(row.get("queued_at"))
            if queued is not None:
                self.latency.labels(channel).observe(max(0.0, (now - queued).total_seconds()))
        elif outcome == "retry":
            self.retries.labels(channel).inc()
        elif outcome == "failed":
            self.failures.labels(channel).inc()

    def rows_pruned(self, table: str, n: int) -> None:
        self.pruned.labels(table).inc(n)

    def table_upkept(self, table: str, action: str) -> None:
        self.upkeep.labels(table, action).inc()

    def webhook_attempt(self, event: str, result: str) -> None:
        self.webhooks.labels(event, result).inc()

    # --------------------------------------------------------------------- scrape
    async def database_gauges(self) -> CollectorRegistry:
        from bot.api.models import webhook_deliveries

        reg = CollectorRegistry(auto_describe=True)
        now = self.rt.clock.now()
        depth = Gauge("loket_queue_depth", "Items waiting (pending) in a durable queue.", ["queue"], registry=reg)
        age = Gauge("loket_queue_oldest_age_seconds", "Age of the oldest waiting item (0 when empty).", ["queue"],
                    registry=reg)
        sla = Gauge("loket_sla_breaches", "Open conversations past an SLA due time and not met.", ["target"],
                    registry=reg)
        states = Gauge("loket_conversations", "Conversations per state.", ["state"], registry=reg)
        c = conversations.c
        async with self.rt.engine.connect() as conn:
            for queue, table, ts, pending in (
                ("inbox", inbox_items, inbox_items.c.received_at, inbox_items.c.status == PENDING),
                ("outbox", outbox_items, outbox_items.c.created_at, outbox_items.c.status.in_(UNSENT)),
                ("webhooks", webhook_deliveries, webhook_deliveries.c.created_at,
                 webhook_deliveries.c.status.in_(["pending", "delivering"])),
            ):
                n, oldest = (await conn.execute(select(func.count(), func.min(ts)).select_from(table)
                                                .where(pending))).one()
                depth.labels(queue).set(n)
                oldest = aware(oldest)
                age.labels(queue).set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
            open_ = c.state != "resolved"
            first = (await conn.execute(select(func.count()).select_from(conversations).where(
                open_, c.first_response_due.is_not(None), c.first_response_due < now, c.first_response_at.is_(None)
            ))).scalar_one()
            resolution = (await conn.execute(select(func.count()).select_from(conversations).where(
                open_, c.resolution_due.is_not(None), c.resolution_due < now,
            ))).scalar_one()
            sla.labels("first_response").set(first)
            sla.labels("resolution").set(resolution)
            for state, n in (await conn.execute(select(c.state, func.count()).group_by(c.state))).all():
                states.labels(state).set(n)
        return reg

    async def handle(self, request: web.Request) -> web.Response:
        token = self.rt.settings.env.get("LOKET_METRICS_TOKEN")
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.Response(status=401, text="metrics token required\n")
        body = generate_latest(self.registry)
        try:
            body += generate_latest(await self.database_gauges())
        except Exception:  # noqa: BLE001 - the process counters are still worth serving
            log.warning("metrics: database gauges unavailable", exc_info=True)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(rt: Runtime) -> None:
    metrics = Metrics(rt)
    rt.services["metrics"] = metrics
    rt.events.subscribe(metrics.on_event, local_only=True)
    rt.dispatcher.on_result.append(metrics.on_dispatch)
    rt.add_ops_route("/metrics", metrics.handle)
