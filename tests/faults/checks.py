"""What the fault suite asserts, computed once at the end: at the fakes (lost, order, duplicates and which of them
were in flight at a kill) and in the database (a handful of aggregate queries)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import (
    conversations,
    customers,
    identities,
    inbox_items,
    messages,
    outbox_items,
    touchpoints,
)
from tests.faults.chaos import Forwarded

# A send answered this long before its process was SIGKILLed may still have been unrecorded (the result waits in
# the dispatcher's batch, or its commit is retried after a cut connection): it counts as in flight at the kill.
RECORD_WINDOW = 5.0


@dataclass
class Tally:
    replies_at_fakes: int = 0
    lost: int = 0
    unexpected: int = 0  # texts at the fakes that answer no customer message
    order_broken: int = 0
    duplicates: int = 0
    in_flight_at_kills: int = 0  # sends by a process that was then killed, not known to be recorded
    unanswered_at_kills: int = 0  # … of which the answer was never written back
    unexplained: list[str] = field(default_factory=list)  # duplicates of sends that were not in flight
    broken_examples: dict[str, list[str]] = field(default_factory=dict)


def in_flight(rec: Forwarded, kills: dict[str, float]) -> bool:
    killed = kills.get(rec.sender)
    if killed is None:
        return False
    if rec.forwarded_at >= killed:
        # A dead process sends nothing: its request was on the wire at the kill and the fake (in this test's
        # event loop, which was busy killing) read it a moment later. The process never heard the answer.
        return True
    return rec.answered_at is None or killed - rec.answered_at <= RECORD_WINDOW


def tally(expected: dict[str, list[str]], sent: list[tuple[str, str]], forwarded: list[Forwarded],
          kills: dict[str, float]) -> Tally:
    t = Tally(replies_at_fakes=len(sent))
    by_conv: dict[str, list[str]] = defaultdict(list)
    for conv, text in sent:
        by_conv[conv].append(text)
    for conv, want in expected.items():
        wanted = set(want)
        firsts = list(dict.fromkeys(by_conv.get(conv, [])))
        got = [x for x in firsts if x in wanted]
        t.lost += len(want) - len(got)
        t.unexpected += len(firsts) - len(got)
        present = set(got)
        if got != [x for x in want if x in present]:
            t.order_broken += 1
            if len(t.broken_examples) < 3:
                t.broken_examples[conv] = [x.rsplit("-", 1)[-1] for x in got]
    t.unexpected += sum(len(set(texts)) for conv, texts in by_conv.items() if conv not in expected)
    copies: dict[str, list[Forwarded]] = defaultdict(list)
    for rec in forwarded:
        copies[rec.key].append(rec)
    counts = Counter(f"{conv}:{text}" for conv, text in sent)
    for key, n in counts.items():
        if n < 2:
            continue
        t.duplicates += n - 1
        earlier = sorted(copies.get(key, []), key=lambda r: r.forwarded_at)[:-1]
        if len(earlier) != n - 1 or not all(in_flight(r, kills) for r in earlier):
            t.unexplained.append(key)
    flying = [r for r in forwarded if in_flight(r, kills)]
    t.in_flight_at_kills = len(flying)
    t.unanswered_at_kills = sum(1 for r in flying if r.answered_at is None)
    return t


async def progress(conn: AsyncConnection) -> dict[str, int]:
    """Work still open in the database (the suite waits for all zeros before it checks)."""
    pending_in = (await conn.execute(select(func.count()).select_from(inbox_items)
                                     .where(inbox_items.c.status != "done"))).scalar_one()
    unsent = (await conn.execute(select(func.count()).select_from(outbox_items)
                                 .where(outbox_items.c.status != "sent"))).scalar_one()
    undelivered_wa = (await conn.execute(select(func.count()).select_from(messages).where(
        messages.c.channel == "whatsapp", messages.c.direction == "out", messages.c.status != "delivered"
    ))).scalar_one()
    return {"inbox_not_done": pending_in, "outbox_not_sent": unsent, "whatsapp_not_delivered": undelivered_wa}


async def database_problems(conn: AsyncConnection, per_conversation: int, people: int,
                            provider_ids: dict[str, set[str]]) -> tuple[dict[str, Any], list[str]]:
    """Every conversation consistent: one customer, identity and conversation per person, still with the bot;
    each customer message stored once and answered once; every queue drained; WhatsApp replies ``delivered``
    by the fake's status callbacks; every recorded provider id one the fake issued."""
    problems: list[str] = []
    c, m = conversations.c, messages.c
    per_conv: dict[int, Counter[str]] = defaultdict(Counter)
    statuses: Counter[tuple[str, str, str]] = Counter()
    for conv_id, channel, direction, status, n in (await conn.execute(
            select(m.conversation_id, m.channel, m.direction, m.status, func.count())
            .group_by(m.conversation_id, m.channel, m.direction, m.status))).all():
        per_conv[conv_id][direction] += n
        statuses[(channel, direction, status)] += n
    states = dict((await conn.execute(select(c.state, func.count()).group_by(c.state))).all())
    n_customers = (await conn.execute(select(func.count()).select_from(customers))).scalar_one()
    n_identities = (await conn.execute(select(func.count()).select_from(identities))).scalar_one()
    inbox = dict((await conn.execute(select(inbox_items.c.status, func.count()).group_by(inbox_items.c.status))).all())
    outbox = dict((await conn.execute(
        select(outbox_items.c.status, func.count()).group_by(outbox_items.c.status))).all())
    recorded = (await conn.execute(select(m.channel, m.channel_message_id).where(m.direction == "out"))).all()
    total = people * per_conversation
    if (n_customers, n_identities, sum(states.values())) != (people, people, people):
        problems.append(f"{n_customers} customers, {n_identities} identities, {sum(states.values())} conversations "
                        f"for {people} people")
    if set(states) != {"bot"}:
        problems.append(f"conversation states {states} (all should still be with the bot)")
    wrong = {cid: dict(n) for cid, n in per_conv.items()
             if (n["in"], n["out"]) != (per_conversation, per_conversation)}
    if wrong:
        problems.append(f"{len(wrong)} conversations without exactly {per_conversation} messages in and out, "
                        f"e.g. {dict(list(wrong.items())[:3])}")
    if inbox != {"done": total}:
        problems.append(f"inbox items {inbox}, expected {total} done")
    if outbox != {"sent": total}:
        problems.append(f"outbox items {outbox}, expected {total} sent")
    out_status = {(ch, st): n for (ch, d, st), n in statuses.items() if d == "out"}
    final = {"telegram": "sent", "whatsapp": "delivered"}
    if any(st != final.get(ch) for ch, st in out_status):
        problems.append(f"outbound statuses {out_status} (Telegram should be sent, WhatsApp delivered)")
    # the timeline has no foreign keys (migration 0004_core): every touchpoint must still name a real customer,
    # conversation and message, and every stored message must be on it once
    t = touchpoints.c
    orphans = (await conn.execute(
        select(func.count()).select_from(
            touchpoints.outerjoin(customers, customers.c.id == t.customer_id)
            .outerjoin(conversations, c.id == t.conversation_id)
            .outerjoin(messages, m.id == t.message_id))
        .where(or_(customers.c.id.is_(None), and_(t.conversation_id.is_not(None), c.id.is_(None)),
                   and_(t.message_id.is_not(None), m.id.is_(None))))
    )).scalar_one()
    if orphans:
        problems.append(f"{orphans} touchpoints name a customer, conversation or message that does not exist")
    on_timeline = dict((await conn.execute(
        select(t.kind, func.count()).where(t.kind.in_(("message_in", "message_out"))).group_by(t.kind))).all())
    stored = {f"message_{d}": sum(n for (_, d2, _), n in statuses.items() if d2 == d) for d in ("in", "out")}
    if {k: on_timeline.get(k, 0) for k in stored} != stored:
        problems.append(f"timeline message touchpoints {on_timeline}, messages stored {stored}")
    unknown = [pid for ch, pid in recorded if pid not in provider_ids.get(ch, set())]
    if unknown:
        problems.append(f"{len(unknown)} outbound messages record a provider id the fake never issued: {unknown[:5]}")
    facts = {"messages": {f"{ch} {d} {st}": n for (ch, d, st), n in sorted(statuses.items())},
             "inbox": inbox, "outbox": outbox, "conversations": states}
    return facts, problems
