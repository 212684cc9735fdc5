"""Escalation: queues, round-robin auto-assignment with capacity and presence, business hours, SLA, CSAT,
frustration and repeated failures → priority.

The decisions are pure functions (``pick_agent``, ``sla_state``, ``is_open``, ``is_frustrated`` …) so they
are tested without a server; ``tick`` applies them against the database every ``LOKET_CONSOLE_TICK``
seconds in worker processes, always with ``rt.clock.now()`` so tests can move time.

Frustration is detected by a *pre-route hook* (same transaction as the inbound message, before routing):
it raises the priority of the customer's open conversation and records a ``priority_raised`` touchpoint,
without taking the routing decision away from the bot's own steps (a router step would have to return a
Decision and so end routing). The CSAT answer is a router step at order 12 that acts only while the
conversation's meta holds a pending survey. Repeated bot failures raise the priority through a router observer
(``agent_console.failures``); SLA targets and due times live in ``agent_console.sla``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, String, cast, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_console.sla import PRIORITIES, due_times, ended, load_policies
from bot.clock import aware
from bot.effects import Custom, Decision, Send, Touch, UpdateConversation
from bot.messages import Choice, Reply
from bot.router import RouteContext
from bot.texts import register, t
from storage.models import agents, conversations, team_members, teams, touchpoints
from storage.repositories import add_touchpoint
from storage.unit_of_work import update_row

if TYPE_CHECKING:
    from bot.outbound import SendRejected  # noqa: F401
    from bot.pipeline import ApplyContext
    from bot.runtime import Runtime

log = logging.getLogger("loket.console")

PRESENCE_TIMEOUT = timedelta(seconds=90)
OPEN_STATES = ("queued", "assigned", "pending_customer")
ORDER_CSAT = 12
FRUSTRATION_WORDS = {"kecewa", "marah", "parah", "kesal", "jengkel", "payah", "angry", "terrible", "awful",
                     "worst", "furious", "useless", "bodoh", "lambat banget"}
_word_re = re.compile(r"\w+", re.UNICODE)

register({
    "console.queue_position": {
        "id": "Anda di antrean nomor {position}. Perkiraan waktu tunggu sekitar {minutes} menit.",
        "en": "You are number {position} in the queue. The expected wait is about {minutes} minutes.",
    },
    "console.offline": {
        "id": "Tim kami sedang di luar jam kerja ({hours}). Pesan Anda sudah kami catat.",
        "en": "Our team is outside working hours ({hours}). We have noted your message.",
    },
    "console.followup": {
        "id": "Kami akan membalas lewat {channel} begitu tim kembali.",
        "en": "We will reply on {channel} as soon as the team is back.",
    },
    "console.csat_ask": {
        "id": "Bagaimana pelayanan kami? Beri nilai 1 (buruk) sampai 5 (sangat baik).",
        "en": "How did we do? Rate us from 1 (poor) to 5 (excellent).",
    },
    "console.csat_comment": {
        "id": "Terima kasih! Ada komentar? Tulis di sini, atau ketik 'lewati'.",
        "en": "Thank you! Any comment? Write it here, or type 'skip'.",
    },
    "console.csat_thanks": {
        "id": "Terima kasih atas masukan Anda.",
        "en": "Thank you for your feedback.",
    },
})

SKIP_WORDS = {"lewati", "skip", "tidak", "no", "ga", "gak", "nggak", "-"}
CHANNEL_NAMES = {"whatsapp": "WhatsApp", "telegram": "Telegram", "email": "email", "webchat": "web chat"}


# ------------------------------------------------------------------ pure decisions
def is_frustrated(text: str) -> bool:
    """Angry words (id/en) or shouting (mostly capitals over enough letters)."""
    lowered = text.lower()
    words = set(_word_re.findall(lowered))
    if words & FRUSTRATION_WORDS or any(" " in w and w in lowered for w in FRUSTRATION_WORDS):
        return True
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= 8 and sum(c.isupper() for c in letters) / len(letters) >= 0.8


def raised_priority(current: str) -> str:
    idx = PRIORITIES.index(current) if current in PRIORITIES else 1
    return PRIORITIES[min(max(idx + 1, 2), len(PRIORITIES) - 1)]


def sla_state(conv: dict[str, Any], now: datetime) -> str:
    """``breached`` / ``warning`` (less than a fifth of the window left) / ``ok`` / ``none``."""
    worst = "none"
    for due_key, done_key in (("first_response_due", "first_response_at"), ("resolution_due", "resolved_at")):
        due = aware(conv.get(due_key))
        if due is None or conv.get(done_key) is not None:
            continue
        start = aware(conv.get("queued_at")) or due
        if now >= due:
            return "breached"
        window = (due - start).total_seconds()
        left = (due - now).total_seconds()
        if window > 0 and left < window * 0.2:
            worst = "warning"
        elif worst == "none":
            worst = "ok"
    return worst


DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def is_open(hours: dict[str, Any] | None, now: datetime) -> bool:
    """``{"timezone": "Asia/Jakarta", "weekly": {"mon": [["08:00", "17:00"]], …}, "holidays": ["2026-12-25"]}``;
    no schedule means always open."""
    if not hours or not hours.get("weekly"):
        return True
    local = now.astimezone(ZoneInfo(hours.get("timezone") or "Asia/Jakarta"))
    if local.date().isoformat() in set(hours.get("holidays") or []):
        return False
    hm = local.strftime("%H:%M")
    return any(start <= hm < end for start, end in (hours["weekly"].get(DAYS[local.weekday()]) or []))


def describe_hours(hours: dict[str, Any]) -> str:
    weekly = hours.get("weekly") or {}
    parts = [f"{d} {'/'.join(f'{a}-{b}' for a, b in weekly[d])}" for d in DAYS if weekly.get(d)]
    return ", ".join(parts) + f" {hours.get('timezone', 'Asia/Jakarta')}"


def auto_assignment_memory() -> Select[Any]:
    """Active agent id, and the touchpoint id of their last auto-assignment (NULL: never) — the round robin's memory.

    One lookup per agent in the partial index ``ix_touchpoints_auto_assigned`` (``actor, id`` of the ``assigned``
    touchpoints): the escalation loop asks on every tick and the timeline grows by four rows per message, so this
    must not read the timeline."""
    actor = literal("auto:") + cast(agents.c.id, String)
    latest = (select(func.max(touchpoints.c.id))
              .where(touchpoints.c.kind == "assigned", touchpoints.c.actor == actor).scalar_subquery())
    return select(agents.c.id, latest).where(agents.c.active.is_(True))


async def last_auto_assignments(conn: AsyncConnection) -> dict[int, int]:
    return {int(agent): int(tp) for agent, tp in (await conn.execute(auto_assignment_memory())).all()
            if tp is not None}


@dataclass(frozen=True)
class AgentSlot:
    id: int
    presence: str
    max_chats: int
    load: int
    last_assigned: int  # sequence of the agent's last auto-assignment; 0 = never


def pick_agent(candidates: list[AgentSlot]) -> AgentSlot | None:
    """Round robin among online agents with spare capacity: the one assigned least recently goes first."""
    free = [a for a in candidates if a.presence == "online" and a.load < a.max_chats]
    if not free:
        return None
    return min(free, key=lambda a: (a.last_assigned, a.id))


def expected_wait_minutes(position: int, online_agents: int, avg_minutes: float = 4.0) -> int:
    return max(1, round(position * avg_minutes / max(online_agents, 1)))


# ------------------------------------------------------------------ effect appliers
async def apply_assign(actx: ApplyContext, eff: Custom) -> None:
    values: dict[str, Any] = {"updated_at": actx.now}
    if "assignee_id" in eff.data:
        values["assignee_id"] = eff.data["assignee_id"]
    if "team_id" in eff.data:
        values["team_id"] = eff.data["team_id"]
    await actx.conn.execute(update(conversations).where(conversations.c.id == actx.conversation_id).values(**values))
    await add_touchpoint(actx.conn, customer_id=actx.customer_id, conversation_id=actx.conversation_id,
                         kind="assigned", now=actx.now, channel=actx.channel, actor=eff.data.get("by", "system"),
                         payload={k: v for k, v in eff.data.items() if k != "by"})
    actx.events.append(("conversation.assigned", {"conversation_id": actx.conversation_id,
                                                  "customer_id": actx.customer_id, **eff.data}))


async def apply_first_response(actx: ApplyContext, eff: Custom) -> None:
    await actx.conn.execute(
        update(conversations)
        .where(conversations.c.id == actx.conversation_id, conversations.c.first_response_at.is_(None))
        .values(first_response_at=actx.now)
    )


def is_new_breach(conv: dict[str, Any], now: datetime) -> bool:
    """Past a due time, and this episode's breach not counted yet."""
    return sla_state(conv, now) == "breached" and not (conv["meta"] or {}).get("sla_breached")


async def record_breach(conn: Any, conv: dict[str, Any], now: datetime) -> tuple[str, dict[str, Any]] | None:
    """Count the episode's breach once: a touchpoint and the ``sla_breached`` mark (``conv`` is updated in
    place); returns the event to publish, or None when there is no new breach."""
    if not is_new_breach(conv, now):
        return None
    # Looks like a new breach: read the row again under a row lock (an agent may be resolving it right now, or
    # another process's tick counting it), and decide on what is committed.
    fresh = (await conn.execute(select(conversations).where(conversations.c.id == conv["id"])
                                .with_for_update())).mappings().first()
    if fresh is None:
        return None
    conv.update(fresh)
    if conv["state"] not in OPEN_STATES or not is_new_breach(conv, now):
        return None
    meta = {**(conv["meta"] or {}), "sla_breached": now.isoformat()}
    await conn.execute(update(conversations).where(conversations.c.id == conv["id"]).values(meta=meta))
    conv["meta"] = meta
    await add_touchpoint(conn, customer_id=conv["customer_id"], conversation_id=conv["id"],
                         kind="sla_breached", now=now, channel=conv["channel"],
                         payload={"priority": conv["priority"], "team_id": conv["team_id"]})
    return ("conversation.sla_breached", {"conversation_id": conv["id"], "customer_id": conv["customer_id"]})


async def apply_close_sla(actx: ApplyContext, eff: Custom) -> None:
    """Before an episode ends (resolved, handed back): a target it ran past counts as a breach now, whether or
    not a tick saw it first — the report must not depend on the tick's timing. With ``{"end": True}`` (the
    REST API, which knows nothing of SLA episodes) it also ends the episode, as the console's own meta does."""
    conv = dict(await actx.conversation_row())
    event = await record_breach(actx.conn, conv, actx.now)
    if event is not None:
        actx.events.append(event)
    if eff.data.get("end"):
        meta = {**(conv["meta"] or {}), **ended(conv["meta"], actx.now)}
        await actx.conn.execute(update(conversations).where(conversations.c.id == conv["id"]).values(meta=meta))
        conv["meta"] = meta
    if event is not None or eff.data.get("end"):
        actx.remember(conversation=conv)


async def apply_csat(actx: ApplyContext, eff: Custom) -> None:
    values: dict[str, Any] = {}
    if "score" in eff.data:
        values["csat_score"] = int(eff.data["score"])
    if eff.data.get("comment"):
        values["csat_comment"] = str(eff.data["comment"])[:2000]
    if values:
        await actx.conn.execute(
            update(conversations).where(conversations.c.id == actx.conversation_id).values(**values))
    actx.events.append(("conversation.csat", {"conversation_id": actx.conversation_id,
                                              "customer_id": actx.customer_id, **eff.data}))


# ------------------------------------------------------------------ router step / hook
def csat_question(lang: str) -> Reply:
    return Reply(t("console.csat_ask", lang), choices=tuple(Choice(str(i), str(i)) for i in range(1, 6)),
                 purpose="csat")


async def csat_step(ctx: RouteContext) -> Decision | None:
    pending = (ctx.conversation.meta or {}).get("csat")
    if not pending:
        return None
    text = ctx.text.strip()
    lang = ctx.language
    if pending.get("stage") == "score":
        if text in {"1", "2", "3", "4", "5"}:
            score = int(text)
            return Decision(step="csat").add(
                Custom("console.csat", {"score": score}),
                Touch("csat", {"score": score}, actor="customer"),
                UpdateConversation(meta={"csat": {"stage": "comment", "score": score}}),
                Send(Reply(t("console.csat_comment", lang), purpose="csat")),
            )
        return None  # not a rating: the bot answers as usual; the survey stays open for a later digit
    if pending.get("stage") == "comment":
        effects: list[Any] = [UpdateConversation(meta={"csat": None})]
        if text.lower() not in SKIP_WORDS:
            effects += [Custom("console.csat", {"comment": text}),
                        Touch("csat", {"score": pending.get("score"), "comment": text[:2000]}, actor="customer")]
        effects.append(Send(Reply(t("console.csat_thanks", lang), purpose="csat")))
        return Decision(effects=effects, step="csat")
    return None


async def raise_priority(conn: Any, *, conversation_id: int, customer_id: int, channel: str | None, old: str,
                         new: str, now: datetime, reason: str, actx: ApplyContext | None = None,
                         **details: Any) -> None:
    """Set the priority and say why on the timeline (``priority_raised``). Inside routing (``actx``) the
    conversation row the router holds is kept current too."""
    values = {"priority": new, "updated_at": now}
    if actx is not None:
        await actx.update_conversation(values)
    else:
        await update_row(conn, conversations, conversation_id, values)
    await add_touchpoint(conn, customer_id=customer_id, conversation_id=conversation_id, kind="priority_raised",
                         now=now, channel=channel, actor="bot",
                         payload={"from": old, "to": new, "reason": reason, **details})


async def apply_raise_priority(actx: ApplyContext, eff: Custom) -> None:
    d = dict(eff.data)
    await raise_priority(actx.conn, conversation_id=actx.conversation_id, customer_id=actx.customer_id,
                         channel=actx.channel, old=d.pop("from"), new=d.pop("to"), now=actx.now,
                         reason=d.pop("reason"), actx=actx, **d)
    actx.events.append(("conversation.updated", {"conversation_id": actx.conversation_id,
                                                 "customer_id": actx.customer_id, "priority": eff.data["to"]}))


async def frustration_hook(conn: Any, msg: Any, identity: dict[str, Any], customer: dict[str, Any],
                           pipeline: Any) -> bool:
    if not msg.text or not is_frustrated(msg.text):
        return False
    conv = (await conn.execute(
        select(conversations.c.id, conversations.c.priority, conversations.c.state)
        .where(conversations.c.identity_id == identity["id"]).order_by(conversations.c.id.desc()).limit(1)
    )).mappings().first()
    if conv is None or conv["state"] == "resolved":
        return False
    new = raised_priority(conv["priority"])
    if new != conv["priority"]:
        await raise_priority(conn, conversation_id=conv["id"], customer_id=customer["id"],
                             channel=identity["channel"], old=conv["priority"], new=new,
                             now=pipeline.clock.now(), reason="frustration")
    return False


# ------------------------------------------------------------------ background work
class Escalation:
    """The escalation loop. What one tick reads is bounded, so a desk with 100,000 open conversations costs the
    same per tick as one with ten:

    * the queue: the ``QUEUE_WINDOW`` longest-waiting queued conversations (told their position, assigned);
    * SLA due times of those, and of conversations an event named since the last tick (escalated, priority
      or team changed — from any process, through the event bus);
    * breaches: only conversations whose due time has passed (an indexed-column filter, not a scan);
    * every ``LOKET_SLA_SCAN_SECONDS`` (and after an SLA policy change) a full pass over the open conversations
      in pages of ``SCAN_PAGE``, each page its own transaction: catches any change that sent no event.
    """

    QUEUE_WINDOW = 500
    SCAN_PAGE = 250

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.interval = float(rt.settings.env.get("LOKET_CONSOLE_TICK", "1.0"))
        self.scan_every = float(rt.settings.env.get("LOKET_SLA_SCAN_SECONDS", "15"))
        self._wake = asyncio.Event()
        self._dirty: set[int] = set()
        self._next_scan = 0.0  # time.monotonic() of the next full pass

    def nudge(self, *, rescan: bool = False) -> None:
        if rescan:
            self._next_scan = 0.0
        self._wake.set()

    def touched(self, conversation_id: int) -> None:
        """A conversation changed (escalated, priority, team …): bring its SLA up to date at the next tick."""
        self._dirty.add(conversation_id)

    async def run(self) -> None:
        while True:
            self._wake.clear()  # before the tick: a nudge that comes during it wakes the next one
            full = time.monotonic() >= self._next_scan
            if full:  # set before the pass, so a rescan asked for during it (a policy saved) is not lost
                self._next_scan = time.monotonic() + self.scan_every
            try:
                await self.tick(full=full)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the loop alive; the next tick retries
                log.exception("escalation tick failed")
                if full:
                    self._next_scan = 0.0  # the pass did not finish: the next tick makes it again
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass

    async def tick(self, *, full: bool = True) -> None:
        from bot.effects import SetState
        from bot.outbound import SendRejected, act_on_conversation

        rt = self.rt
        now = rt.clock.now()
        dirty, self._dirty = self._dirty, set()
        breached_events: list[tuple[str, dict[str, Any]]] = []
        async with rt.engine.begin() as conn:
            await conn.execute(update(agents).where(agents.c.presence != "offline",
                                                    agents.c.presence_at < now - PRESENCE_TIMEOUT)
                               .values(presence="offline"))
            policies = await load_policies(conn)
            queued = [dict(r) for r in (await conn.execute(
                select(conversations).where(conversations.c.state == "queued")
                .order_by(conversations.c.queued_at, conversations.c.id).limit(self.QUEUE_WINDOW))).mappings().all()]
            seen = {c["id"] for c in queued}
            others: list[dict[str, Any]] = []
            wanted = sorted(dirty - seen)
            for i in range(0, len(wanted), self.SCAN_PAGE):
                others += [dict(r) for r in (await conn.execute(select(conversations).where(
                    conversations.c.id.in_(wanted[i:i + self.SCAN_PAGE]),
                    conversations.c.state.in_(OPEN_STATES)))).mappings().all()]
            await self._bring_up_to_date(conn, queued + others, policies, now, breached_events)
            if not full:
                seen |= {c["id"] for c in others}
                late = [dict(r) for r in (await conn.execute(select(conversations).where(
                    conversations.c.state.in_(OPEN_STATES),
                    ((conversations.c.first_response_due <= now) & conversations.c.first_response_at.is_(None))
                    | ((conversations.c.resolution_due <= now) & conversations.c.resolved_at.is_(None)))
                )).mappings().all() if r["id"] not in seen]
                await self._bring_up_to_date(conn, late, policies, now, breached_events)
            team_rows = {r["id"]: dict(r) for r in (await conn.execute(select(teams))).mappings().all()}
            agent_rows = (await conn.execute(select(agents).where(agents.c.active.is_(True)))).mappings().all()
            loads: dict[int, int] = dict((await conn.execute(
                select(conversations.c.assignee_id, func.count())
                .where(conversations.c.state.in_(("assigned", "pending_customer")),
                       conversations.c.assignee_id.is_not(None))
                .group_by(conversations.c.assignee_id))).all())
            last = await last_auto_assignments(conn)
            membership: dict[int, set[int]] = {}
            for tm in (await conn.execute(select(team_members))).mappings().all():
                membership.setdefault(tm["team_id"], set()).add(tm["agent_id"])
        if full:
            await self._scan(policies, now, breached_events)
        if breached_events:
            await rt.events.publish(breached_events)
        await self._serve_queue(queued, team_rows, agent_rows, loads, last, membership, now,
                                act_on_conversation, SendRejected, SetState)

    async def _scan(self, policies: Any, now: datetime, breached_events: list[tuple[str, dict[str, Any]]]) -> None:
        """Every open conversation, a page per transaction (memory and lock time stay bounded)."""
        after = 0
        while True:
            async with self.rt.engine.begin() as conn:
                page = [dict(r) for r in (await conn.execute(
                    select(conversations).where(conversations.c.state.in_(OPEN_STATES), conversations.c.id > after)
                    .order_by(conversations.c.id).limit(self.SCAN_PAGE))).mappings().all()]
                if not page:
                    return
                await self._bring_up_to_date(conn, page, policies, now, breached_events)
            after = page[-1]["id"]
            if len(page) < self.SCAN_PAGE:
                return

    async def _bring_up_to_date(self, conn: Any, rows: list[dict[str, Any]], policies: Any, now: datetime,
                                breached_events: list[tuple[str, dict[str, Any]]]) -> None:
        """SLA due times from the episode's start and the current priority, team and policies; breaches, counted
        once per episode. Updates ``rows`` in place."""
        for conv in rows:
            values = due_times(conv, policies)
            if values:
                await conn.execute(update(conversations).where(conversations.c.id == conv["id"]).values(**values))
                conv.update(values)
            event = await record_breach(conn, conv, now)
            if event is not None:
                breached_events.append(event)

    async def _serve_queue(self, queued: list[dict[str, Any]], team_rows: dict[int, dict[str, Any]],
                           agent_rows: Any, loads: dict[int, int], last_assigned: dict[int, int],
                           membership: dict[int, set[int]], now: datetime, act_on_conversation: Any,
                           send_rejected: type[Exception], set_state: Any) -> None:
        rt = self.rt
        online = sum(1 for a in agent_rows if a["presence"] == "online")
        # round robin memory: the touchpoint id of each agent's last auto-assignment orders them
        slots = {a["id"]: AgentSlot(a["id"], a["presence"], a["max_chats"], int(loads.get(a["id"], 0)),
                                    int(last_assigned.get(a["id"], 0))) for a in agent_rows}
        seq = max([0, *last_assigned.values()])
        prio_rank = {p: i for i, p in enumerate(reversed(PRIORITIES))}
        for position, conv in enumerate(queued, start=1):
            team = team_rows.get(conv["team_id"]) if conv["team_id"] else None
            meta = conv["meta"] or {}
            if not meta.get("queue_notified"):
                await self._notify(conv, team, position, online, act_on_conversation, send_rejected, now)
        for conv in sorted(queued, key=lambda c: (prio_rank.get(c["priority"], 9), str(c["queued_at"]))):
            team = team_rows.get(conv["team_id"]) if conv["team_id"] else None
            if team and not is_open(team["business_hours"], now):
                continue
            pool = [s for aid, s in slots.items() if team is None or aid in membership.get(team["id"], set())]
            chosen = pick_agent(pool)
            if chosen is None:
                continue
            try:
                await act_on_conversation(rt, conv["id"], [
                    Custom("console.assign", {"assignee_id": chosen.id, "by": f"auto:{chosen.id}"}),
                    set_state("assigned", reason="auto_assigned"),
                ])
            except Exception:  # noqa: BLE001
                log.exception("auto-assignment of conversation %s failed", conv["id"])
                continue
            seq += 1
            slots[chosen.id] = AgentSlot(chosen.id, chosen.presence, chosen.max_chats, chosen.load + 1, seq)

    async def _notify(self, conv: dict[str, Any], team: dict[str, Any] | None, position: int, online: int,
                      act: Any, rejected: type[Exception], now: datetime) -> None:
        lang = conv["language"] or "id"
        effects: list[Any] = [UpdateConversation(meta={"queue_notified": now.isoformat()})]
        hours = (team or {}).get("business_hours") or {}
        if not is_open(hours, now):
            effects.append(Send(Reply(t("console.offline", lang, hours=describe_hours(hours)), purpose="queue_status")))
            effects.append(Send(Reply(t("console.followup", lang, channel=CHANNEL_NAMES.get(conv["channel"],
                                                                                             conv["channel"])),
                                      purpose="queue_status")))
        elif position > 1:  # first in line: the core's "you are in the queue" already says it all
            effects.append(Send(Reply(t("console.queue_position", lang, position=position,
                                        minutes=expected_wait_minutes(position, online)), purpose="queue_status")))
        try:
            await act(self.rt, conv["id"], effects)
        except rejected:
            await act(self.rt, conv["id"], effects[:1])


def setup(rt: Runtime) -> None:
    esc = Escalation(rt)
    rt.services["escalation"] = esc
    rt.pipeline.appliers["console.assign"] = apply_assign
    rt.pipeline.appliers["console.first_response"] = apply_first_response
    rt.pipeline.appliers["console.csat"] = apply_csat
    rt.pipeline.appliers["console.close_sla"] = apply_close_sla
    rt.pipeline.appliers["console.raise_priority"] = apply_raise_priority
    rt.pipeline.pre_route_hooks.append(frustration_hook)
    from agent_console.failures import make_observer, threshold_from

    rt.router.observe("repeated_failures", make_observer(threshold_from(rt.settings.env)))
    rt.router.add("csat", csat_step, ORDER_CSAT)

    async def on_event(name: str, payload: dict[str, Any]) -> None:
        if name.startswith("conversation.") and isinstance(payload.get("conversation_id"), int):
            esc.touched(payload["conversation_id"])
        if name in {"conversation.escalated", "agent.presence"}:
            esc.nudge()

    rt.events.subscribe(on_event)
    rt.add_task("console-escalation", esc.run)
