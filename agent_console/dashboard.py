"""The supervisor dashboard's figures: what the database counts (``read``) and the charts drawn from them.

Counting is the database's work. Only the columns the figures need come back, and the customers' messages as
counts per channel and hour: a month of a busy desk is hundreds of thousands of rows, and on SQLite the statements
run on the event loop's thread, so every millisecond spent here is one the bot waits too (``bench/dashboard_bench.py``,
BENCHMARKS.md §3).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_console import sla
from agent_console.escalation import OPEN_STATES
from bot.appointments import reports
from bot.appointments.models import STATUSES as appointment_statuses
from bot.clock import aware
from storage.db import utc_hour
from storage.models import HANDOFFS, SLA_BREACHED, agents, conversations, messages, touchpoints

# What the dashboard reads of each conversation: of ``meta`` only the SLA episode's start
CONVERSATION_COLUMNS = (
    conversations.c.id, conversations.c.state, conversations.c.assignee_id, conversations.c.queued_at,
    conversations.c.first_response_at, conversations.c.resolved_at, conversations.c.csat_score,
    conversations.c.meta["sla"]["start"].as_string().label("sla_start"),
)


_HOUR = utc_hour(messages.c.created_at)
# A window's customer messages per channel and UTC hour (PostgreSQL reads only the window's pages, through the
# block-range index on the date), its SLA breaches and the conversations handed to a person (partial indexes on
# the timeline, their conditions written as in the indexes, see storage.models): migration 0006_core.
MESSAGES_IN = (select(messages.c.channel, _HOUR, func.count())
               .where(messages.c.direction == "in", messages.c.created_at >= bindparam("since"))
               .group_by(messages.c.channel, _HOUR))
BREACHES = select(func.count()).select_from(touchpoints).where(SLA_BREACHED, touchpoints.c.created_at >= bindparam("since"))
HANDED_OVER = select(touchpoints.c.conversation_id).distinct().where(
    HANDOFFS, touchpoints.c.created_at >= bindparam("since"))


@dataclass
class Figures:
    """A window's figures: ``stats`` for the tiles, the rest for the charts."""

    stats: dict[str, Any]
    by_channel: dict[str, int]
    by_hour: dict[int, int]
    csat: dict[int, int]  # score → conversations
    load: list[tuple[str, int]]  # active agent → open conversations of the window assigned to them
    appointments: dict[str, Any] | None = field(default=None)


async def read(conn: AsyncConnection, since: datetime, now: datetime) -> Figures:
    """The figures of conversations started and customer messages received since ``since``."""
    convs = [dict(r) for r in (await conn.execute(
        select(*CONVERSATION_COLUMNS).where(conversations.c.created_at >= since))).mappings()]
    msgs_in = (await conn.execute(MESSAGES_IN, {"since": since})).all()
    breaches = (await conn.execute(BREACHES, {"since": since})).scalar_one()
    human = set((await conn.execute(HANDED_OVER, {"since": since})).scalars())
    agent_rows = [(aid, name) for aid, name in (await conn.execute(
        select(agents.c.id, agents.c.name).where(agents.c.active.is_(True)).order_by(agents.c.id))).all()]
    fig = figures(convs, [(ch, int(h), int(n)) for ch, h, n in msgs_in], int(breaches), human, agent_rows)
    fig.appointments = await appointment_stats(conn, since, now)
    return fig


def figures(convs: list[dict[str, Any]], msgs_in: list[tuple[str, int, int]], breaches: int, human: set[int],
            agent_rows: list[tuple[int, str]]) -> Figures:
    """The figures from what ``read`` fetched (no I/O): the window's conversations (``CONVERSATION_COLUMNS``),
    customer messages as (channel, UTC hour, count), SLA breaches, the conversations a person took part in, and
    the active agents as (id, name)."""
    by_channel: Counter[str] = Counter()
    by_hour: Counter[int] = Counter()
    for channel, h, n in msgs_in:
        by_channel[channel] += n
        by_hour[h] += n
    resolved = [c for c in convs if c["state"] == "resolved" or c["resolved_at"]]
    bot_only = [c for c in resolved if c["id"] not in human and c["assignee_id"] is None]
    fr = minutes_since_start(convs, "first_response_at")
    rs = minutes_since_start(convs, "resolved_at")
    scores = [c["csat_score"] for c in convs if c["csat_score"]]
    load = Counter(c["assignee_id"] for c in convs if c["state"] in OPEN_STATES and c["assignee_id"])
    stats = {
        "conversations": len(convs),
        "deflection": round(100 * len(bot_only) / len(convs), 1) if convs else 0.0,
        "first_response_avg": round(sum(fr) / len(fr), 1) if fr else None,
        "resolution_avg": round(sum(rs) / len(rs), 1) if rs else None,
        "breaches": breaches,
        "csat_avg": round(sum(scores) / len(scores), 2) if scores else None,
        "csat_count": len(scores),
    }
    return Figures(stats=stats, by_channel=dict(by_channel), by_hour=dict(by_hour), csat=dict(Counter(scores)),
                   load=[(name, load.get(aid, 0)) for aid, name in agent_rows])


def minutes_since_start(convs: list[dict[str, Any]], done_key: str) -> list[float]:
    """Minutes from the start of each conversation's SLA episode to ``done_key`` (first response, resolution);
    rows of ``CONVERSATION_COLUMNS``."""
    out = []
    for c in convs:
        start, done = sla.episode_start(c["sla_start"], c["queued_at"]), aware(c[done_key])
        if start is not None and done is not None and done >= start:
            out.append((done - start).total_seconds() / 60)
    return out


def charts(fig: Figures) -> dict[str, dict[str, Any]]:
    """The dashboard's bar charts (geometry for the template's SVG)."""
    out = {
        "channel": bars(sorted(fig.by_channel.items())),
        "hour": bars([(f"{h:02d}", fig.by_hour.get(h, 0)) for h in range(24)], width=720),
        "csat": bars([(str(s), fig.csat.get(s, 0)) for s in range(1, 6)]),
        "load": bars(fig.load),
    }
    if fig.appointments:
        out["appointments"] = bars(fig.appointments["status"])
        out["patients"] = bars(fig.appointments["months"])
    return out


def bars(data: list[tuple[str, int]], width: int = 360, height: int = 140) -> dict[str, Any]:
    """Geometry for a server-rendered SVG bar chart (the template draws it): the axis labels take the bottom
    16 px, each bar's value sits above it, so the tallest bar leaves 18 px for its value at the top."""
    n = max(len(data), 1)
    top = max([v for _, v in data] + [1])
    slot = width / n
    out = []
    for i, (label, value) in enumerate(data):
        h = (height - 34) * value / top
        out.append({"label": str(label), "value": value, "x": round(i * slot + 2, 1), "w": round(slot - 4, 1),
                    "y": round(height - 16 - h, 1), "h": round(h, 1), "tx": round(i * slot + slot / 2, 1)})
    return {"bars": out, "width": width, "height": height}


async def appointment_stats(conn: AsyncConnection, since: datetime, now: datetime) -> dict[str, Any] | None:
    """Appointments starting in the window per status, and patients per month over the last year (the reports of
    ``loket appointments report``); None for a desk that keeps no appointments."""
    summary = await reports.status_summary(conn, since, now)
    months = await reports.monthly(conn, now)
    if not summary["total"] and not any(m["appointments"] for m in months):
        return None
    return {"status": [(s, summary[s]) for s in appointment_statuses if summary[s]],
            "months": [(m["month"], m["patients"]) for m in months]}
