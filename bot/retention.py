"""Retention: the work queues' finished rows are deleted once they are no longer needed.

The durable queues keep a row for every message in and out and every outgoing webhook event. Once the work is
done the row has served its purpose — the record lives on the customer's timeline and the message rows — but
left alone the queue tables and their status indexes would grow for ever. What goes, and when:

==========================  ======================================================  ============================
table                       rows deleted                                            setting (days; 0 = keep)
==========================  ======================================================  ============================
``inbox_items``             ``done``, processed longer ago than                      ``LOKET_RETAIN_INBOX_DAYS``
``outbox_items``            ``sent``, sent longer ago than                           ``LOKET_RETAIN_OUTBOX_DAYS``
``webhook_deliveries``      ``delivered``, delivered longer ago than                 ``LOKET_RETAIN_WEBHOOK_DAYS``
the three above             ``failed``, received or created longer ago than          ``LOKET_RETAIN_FAILED_DAYS``
``console_sessions``        expired                                                  (always)
``console_login_attempts``  older than a day (the lockout looks back 15 minutes)     (always)
==========================  ======================================================  ============================

A done inbox row is also what recognises a provider's redelivery of the same message (the unique
``(channel, provider_message_id)``), so the inbox keeps at least a day: Telegram holds an undelivered update for
up to 24 hours. Nothing on a customer's record is touched: messages, touchpoints, conversations stay.

How the queue tables are walked: in primary-key order from the oldest row, a chunk at a time, each chunk deleted in
its own short transaction (the live traffic waits for at most one chunk), stopping at the first chunk whose rows
are all newer than the most recent cutoff. Ids grow with time, so one pass costs what it deletes plus the few old
rows kept on purpose (pending or failed ones), not a scan of the table, and needs no index beyond the primary key.
On PostgreSQL one process at a time runs a pass (an advisory lock): with several workers on one database, the
others leave the work to the one at it until their next turn, rather than walking the same rows behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_console.models import console_sessions, login_attempts
from bot.api.models import webhook_deliveries
from bot.clock import aware
from storage.advisory import exclusive
from storage.db import is_sqlite
from storage.models import inbox_items, outbox_items

LOGIN_ATTEMPTS_KEPT = timedelta(days=1)
CHUNK = 1000
# pg_try_advisory_lock key of the pass (any constant; "loket rt" in ASCII): one process at a time prunes
LOCK_KEY = 0x6C6F6B6574207274


@dataclass(frozen=True)
class RetentionPolicy:
    """Days to keep each kind of finished row (0: keep for ever)."""

    inbox_days: int = 30
    outbox_days: int = 30
    webhook_days: int = 30
    failed_days: int = 90


@dataclass(frozen=True)
class Rule:
    """What to delete from one table: ``condition``; ``kept``: how long its finished rows stay, in words. For a
    walked table, ``clock`` is the column that grows with the id and ``boundary`` the most recent cutoff (rows with
    ``clock`` at or after it never qualify)."""

    name: str
    table: Table
    condition: ColumnElement[bool]
    kept: str
    clock: Any = None
    boundary: datetime | None = None


def _span(days: int) -> str:
    return f"{days} days" if days else "for ever"


def _queue_rule(name: str, table: Table, clock: Any, now: datetime, finished: str, finished_at: Any,
                finished_days: int, failed_days: int) -> Rule | None:
    """A rule for a queue table: rows in the ``finished`` status whose ``finished_at`` is older than
    ``finished_days``, and failed rows whose ``clock`` (when they were queued) is older than ``failed_days``."""
    conditions = [and_(table.c.status == status, column < now - timedelta(days=days))
                  for status, column, days in ((finished, finished_at, finished_days), ("failed", clock, failed_days))
                  if days > 0]
    if not conditions:
        return None
    boundary = now - timedelta(days=min(d for d in (finished_days, failed_days) if d > 0))
    return Rule(name, table, or_(*conditions), f"{_span(finished_days)}; failed ones {_span(failed_days)}", clock,
                boundary)


def rules(policy: RetentionPolicy, now: datetime) -> list[Rule]:
    """What a pass deletes at ``now`` under ``policy`` (no I/O)."""
    found: list[Rule | None] = [
        _queue_rule("inbox_items", inbox_items, inbox_items.c.received_at, now,
                    "done", inbox_items.c.processed_at, policy.inbox_days, policy.failed_days),
        _queue_rule("outbox_items", outbox_items, outbox_items.c.created_at, now,
                    "sent", outbox_items.c.sent_at, policy.outbox_days, policy.failed_days),
        _queue_rule("webhook_deliveries", webhook_deliveries, webhook_deliveries.c.created_at, now,
                    "delivered", webhook_deliveries.c.delivered_at, policy.webhook_days, policy.failed_days),
        Rule("console_sessions", console_sessions, console_sessions.c.expires_at < now, "until they expire"),
        Rule("console_login_attempts", login_attempts, login_attempts.c.created_at < now - LOGIN_ATTEMPTS_KEPT,
             f"{LOGIN_ATTEMPTS_KEPT.days} day"),
    ]
    return [r for r in found if r is not None]


Progress = Callable[[str, int], None]  # (rule name, rows deleted by the last chunk)


async def count(engine: AsyncEngine, rule: Rule) -> int:
    """How many rows the rule would delete now (a full count: for ``loket db prune --dry-run`` and its progress)."""
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(rule.table).where(rule.condition)))
                   .scalar_one())


async def _walk(engine: AsyncEngine, rule: Rule, chunk: int, progress: Progress | None) -> int:
    table, pk, boundary = rule.table, rule.table.c.id, rule.boundary
    assert boundary is not None
    deleted, after = 0, 0
    while True:
        async with engine.begin() as conn:
            rows = (await conn.execute(
                select(pk, rule.clock).where(pk > after).order_by(pk).limit(chunk))).all()
            if not rows:
                return deleted
            last = rows[-1][0]
            result = await conn.execute(delete(table).where(pk > after, pk <= last, rule.condition))
            n = max(0, result.rowcount or 0)
        deleted += n
        if progress is not None:
            progress(rule.name, n)
        after = last
        if len(rows) < chunk or all((a := aware(t)) is not None and a >= boundary for _, t in rows):
            return deleted  # the end of the table, or every row from here on is newer than any cutoff
        await asyncio.sleep(0)  # let the live traffic in between chunks


async def prune(engine: AsyncEngine, policy: RetentionPolicy, now: datetime, *, chunk: int = CHUNK,
                progress: Progress | None = None) -> dict[str, int] | None:
    """Delete what ``policy`` lets go at ``now``; rows deleted per table. None: another process is running a pass
    on this PostgreSQL database right now (it deletes the same rows)."""
    if is_sqlite(engine):
        return await _prune(engine, policy, now, chunk, progress)
    async with exclusive(engine, LOCK_KEY) as held:
        if held is None:
            return None
        return await _prune(engine, policy, now, chunk, progress)


async def _prune(engine: AsyncEngine, policy: RetentionPolicy, now: datetime, chunk: int,
                 progress: Progress | None) -> dict[str, int]:
    deleted: dict[str, int] = {}
    for rule in rules(policy, now):
        if rule.clock is not None:
            deleted[rule.name] = await _walk(engine, rule, chunk, progress)
            continue
        async with engine.begin() as conn:
            result = await conn.execute(delete(rule.table).where(rule.condition))
        deleted[rule.name] = max(0, result.rowcount or 0)
        if progress is not None:
            progress(rule.name, deleted[rule.name])
    return deleted
