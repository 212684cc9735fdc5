"""The flow engine as a Loket component: loads flows, registers the router step, the "menu" command,
the inactivity-timeout sweeper and the demo shop's orders.

Settings: ``LOKET_FLOWS`` (a folder of flow files; default: the demo flows when ``LOKET_DEMO`` is on),
``LOKET_DEFAULT_FLOW`` (started for new conversations and by "menu"; the demo's is ``main``),
``LOKET_FLOW_TIMEOUT_POLL`` (seconds between timeout sweeps, default 5).
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rapidfuzz import fuzz
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

import bot.flows.texts  # noqa: F401 - registers the engine's texts
import bot.handlers  # noqa: F401 - registers the built-in handlers
from bot.clock import aware
from bot.effects import Decision, Send, Touch
from bot.flows.engine import continue_flow, current_conn, parse_payload, start_flow, start_from_button
from bot.flows.loader import FlowDef, FlowLoadError, check_set, load_folder
from bot.flows.models import orders
from bot.flows.registry import FlowRegistry
from bot.handlers import registry as handler_registry
from bot.messages import InboundMessage, Reply
from bot.router import ORDER_FLOW, RouteContext
from bot.texts import t
from storage.models import conversations

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("loket.flows")

DEMO_PATH = Path(__file__).parent / "demo"
DEMO_DEFAULT_FLOW = "main"
GREETINGS = {"halo", "hallo", "hai", "hi", "hello", "hey", "pagi", "siang", "sore", "malam", "selamat pagi",
             "selamat siang", "selamat sore", "selamat malam", "assalamualaikum", "permisi", "good morning",
             "good afternoon", "good evening", "p", "start", "/start", "mulai"}
TIMEOUT_BATCH = 500
_word_re = re.compile(r"[^\w\s]", re.UNICODE)


def _norm(text: str) -> str:
    return " ".join(_word_re.sub(" ", text.lower()).split())


def match_trigger(text: str, flows: list[FlowDef]) -> FlowDef | None:
    """The flow whose trigger phrase appears in the message (whole words; small typos in long words)."""
    norm = _norm(text)
    if not norm:
        return None
    words = norm.split()
    padded = f" {norm} "
    best: tuple[float, FlowDef] | None = None
    for flow in flows:
        for phrase in flow.triggers:
            p = _norm(phrase)
            if not p:
                continue
            score = 0.0
            if f" {p} " in padded:
                score = 100 + len(p)
            elif " " not in p and len(p) >= 5:
                close = max((fuzz.ratio(p, w) for w in words if abs(len(w) - len(p)) <= 2), default=0)
                if close >= 85:
                    score = close
            if score and (best is None or score > best[0]):
                best = (score, flow)
    return best[1] if best else None


class FlowService:
    """Holds the registry; the router step and the "menu" command use it."""

    def __init__(self, rt: Runtime, registry: FlowRegistry) -> None:
        self.rt = rt
        self.registry = registry
        self.poll = float(rt.settings.env.get("LOKET_FLOW_TIMEOUT_POLL", "5") or 5)
        self.timeouts_applied = 0

    # ------------------------------------------------------------------ router
    async def step(self, ctx: RouteContext) -> Decision | None:
        """The active flow takes the answer; otherwise a trigger word or a new conversation starts one."""
        reg = self.registry
        if not reg:
            return None
        forced = ctx.message.meta.get("start_flow") if ctx.message.kind == "start" else None
        if forced:
            flow = reg.latest(str(forced))
            if flow is not None:
                return await start_flow(ctx, reg, flow, reason="requested")
        pos = ctx.conversation.flow
        if pos and pos.get("flow"):
            expires = pos.get("expires_at")
            expired = bool(expires) and datetime.fromisoformat(str(expires)) <= ctx.now
            if not expired:
                conn = current_conn.get()
                if conn is not None and reg.get(str(pos["flow"]), int(pos.get("version") or 0)) is None:
                    await reg.fetch(conn, str(pos["flow"]), int(pos.get("version") or 0))
                if kb_feedback_pending(ctx):
                    return None  # the knowledge base asked "was this helpful?": its step reads the answer
                decision = await continue_flow(ctx, reg, pos)
                if decision is not None and free_question_at_menu(ctx, decision):
                    return None  # the knowledge base answers; the flow keeps its place
                if decision is not None:
                    return decision
                log.warning("conversation %s is at flow %s@%s node %s, which no longer exists; starting over",
                            ctx.conversation.id, pos.get("flow"), pos.get("version"), pos.get("node"))
        payload = parse_payload(ctx.text)
        if payload:
            decision = await start_from_button(ctx, reg, payload)
            if decision is not None:
                return decision
        if ctx.message.kind not in {"message", "start"}:
            return None
        flow = match_trigger(ctx.raw_text, reg.current())
        if flow is not None:
            return await start_flow(ctx, reg, flow, reason="trigger")
        default = reg.default()
        if default is None:
            return None
        if ctx.conversation.is_new or ctx.conversation.reopened or ctx.message.kind == "start" \
                or _norm(ctx.raw_text) in GREETINGS or (pos and pos.get("flow")):
            return await start_flow(ctx, reg, default, reason="new" if ctx.conversation.is_new else "greeting")
        return None

    async def main_menu(self, ctx: RouteContext) -> Decision | None:
        default = self.registry.default()
        if default is None:
            return None
        return await start_flow(ctx, self.registry, default, reason="menu")

    async def pre_route(self, conn: AsyncConnection, msg: InboundMessage, identity: dict[str, Any],
                        customer: dict[str, Any], pipeline: Any) -> bool:
        current_conn.set(conn)
        return False  # it changed nothing: the pipeline need not read the identity again

    # ------------------------------------------------------------------ startup
    async def startup(self) -> None:
        errors = check_set(self.registry.current(), handler_registry.names())
        if errors:
            raise FlowLoadError(errors)
        async with self.rt.engine.begin() as conn:
            await self.registry.sync(conn, self.rt.clock.now())
            if self.rt.settings.demo:
                await seed_demo_orders(conn, self.rt.clock.now())

    # ------------------------------------------------------------------ timeouts
    async def timeout_loop(self) -> None:
        while True:
            try:
                await self.sweep_timeouts()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep sweeping; the next round retries
                log.exception("flow timeout sweep failed")
            await asyncio.sleep(self.poll)

    async def sweep_timeouts(self) -> int:
        """Close flows whose inactivity timeout passed. Returns how many were closed."""
        from bot.outbound import SendRejected, act_on_conversation

        now = self.rt.clock.now()
        due: list[tuple[int, dict[str, Any], Any]] = []
        # resume where the last sweep stopped, so every active flow is looked at however many there are
        last_id = getattr(self, "_sweep_cursor", 0)
        for _ in range(20):  # at most 20 pages of TIMEOUT_BATCH per sweep
            async with self.rt.engine.connect() as conn:
                rows = (await conn.execute(
                    select(conversations.c.id, conversations.c.flow, conversations.c.last_message_at)
                    .where(conversations.c.state == "bot", conversations.c.flow.is_not(None),
                           conversations.c.id > last_id)
                    .order_by(conversations.c.id).limit(TIMEOUT_BATCH)
                )).mappings().all()
            for r in rows:
                flow = r["flow"]
                if isinstance(flow, dict) and flow.get("expires_at") and \
                        aware(datetime.fromisoformat(str(flow["expires_at"]))) <= now:  # type: ignore[operator]
                    due.append((int(r["id"]), flow, r["last_message_at"]))
            if len(rows) < TIMEOUT_BATCH:
                last_id = 0  # reached the end: the next sweep starts from the beginning
                break
            last_id = int(rows[-1]["id"])
        self._sweep_cursor = last_id
        closed = 0
        for conv_id, flow, seen_at in due:
            # claim it: only one process (and only if the customer has not written since) times it out
            async with self.rt.engine.begin() as conn:
                cond = conversations.c.last_message_at == seen_at if seen_at is not None \
                    else conversations.c.last_message_at.is_(None)
                claimed = (await conn.execute(
                    update(conversations)
                    .where(conversations.c.id == conv_id, conversations.c.state == "bot",
                           conversations.c.flow.is_not(None), cond)
                    .values(flow=None)
                )).rowcount
            if claimed != 1:
                continue
            fdef = self.registry.get(str(flow.get("flow")), int(flow.get("version") or 0))
            lang = str(flow.get("lang") or "id")
            text = (fdef.timeout_text or {}).get(lang) if fdef and fdef.timeout_text else None
            touch = Touch("flow_timeout", {"flow": flow.get("flow"), "version": flow.get("version"),
                                           "node": flow.get("node"), "idle_since": flow.get("last_activity")})
            try:
                await act_on_conversation(self.rt, conv_id, [
                    Send(Reply(text or t("flows.timeout", lang), purpose="flow_timeout")), touch])
            except SendRejected:  # e.g. WhatsApp's 24-hour window closed: clear quietly
                await act_on_conversation(self.rt, conv_id, [touch])
            closed += 1
        self.timeouts_applied += closed
        return closed


DEMO_ORDERS = [
    {"order_no": "INV-1001", "customer_name": "Budi Santoso", "status": "shipped",
     "items": [{"name": "Kaos Batik Lengan Pendek", "qty": 2}], "total": 350000, "carrier": "JNE",
     "tracking_no": "JNE0012345678", "eta": "2026-11-26"},
    {"order_no": "INV-1002", "customer_name": "Siti Rahma", "status": "paid",
     "items": [{"name": "Tas Anyaman Rotan", "qty": 1}], "total": 275000, "carrier": None,
     "tracking_no": None, "eta": None},
    {"order_no": "INV-1003", "customer_name": "Andi Wijaya", "status": "delivered",
     "items": [{"name": "Sepatu Kanvas", "qty": 1}], "total": 420000, "carrier": "SiCepat",
     "tracking_no": "SCP998877", "eta": "2026-11-20"},
    {"order_no": "INV-1004", "customer_name": "Dewi Lestari", "status": "cancelled",
     "items": [{"name": "Kemeja Linen", "qty": 1}], "total": 310000, "carrier": None,
     "tracking_no": None, "eta": None},
]


async def seed_demo_orders(conn: AsyncConnection, now: datetime) -> None:
    from storage.db import insert_ignore

    for order in DEMO_ORDERS:
        await conn.execute(insert_ignore(conn, orders).values(**order, updated_at=now))


def load_registry(rt: Runtime) -> FlowRegistry:
    registry = FlowRegistry()
    settings = rt.settings
    path = settings.flows_path or (DEMO_PATH if settings.demo else None)
    if path is None:
        return registry
    flows, errors = load_folder(path)
    if errors:
        raise FlowLoadError(errors)
    for flow in flows:
        registry.add(flow)
    default = settings.env.get("LOKET_DEFAULT_FLOW") or (
        DEMO_DEFAULT_FLOW if settings.flows_path is None else None)
    if default is None and len(flows) == 1:
        default = flows[0].id
    if default is not None and registry.latest(default) is None:
        raise ValueError(
            f"LOKET_DEFAULT_FLOW={default!r} is not one of the loaded flows ({', '.join(f.id for f in flows)}); "
            "set it to a flow id from your flows folder")
    registry.default_flow = default
    log.info("loaded %d flow(s) from %s; default flow: %s", len(flows), path, default or "none")
    return registry


def kb_feedback_pending(ctx: RouteContext) -> bool:
    """The knowledge base's last answer asked "was this helpful?" and this message answers it."""
    if "kb_answer" not in ctx.services or not (ctx.conversation.meta or {}).get("kb_pending"):
        return False
    from knowledge_base.chat import _feedback_value

    return _feedback_value(ctx) is not None


def free_question_at_menu(ctx: RouteContext, decision: Decision) -> bool:
    """A question typed at a menu that matches none of its options ("jam buka klinik?" at the shop menu) goes to
    the knowledge base instead of "that option does not exist"; one or two words stay a menu answer."""
    if "kb_answer" not in ctx.services or len(ctx.raw_text.split()) < 3:
        return False
    return any(isinstance(e, Touch) and e.kind == "flow_invalid_answer" and e.payload.get("reason") == "not_an_option"
               for e in decision.effects)


def setup(rt: Runtime) -> None:
    registry = load_registry(rt)
    service = FlowService(rt, registry)
    rt.services["flows"] = registry
    rt.services["flows.service"] = service
    rt.services["flows.engine"] = rt.engine
    rt.services["main_menu"] = service.main_menu
    rt.router.add("flow", service.step, ORDER_FLOW)
    rt.pipeline.pre_route_hooks.append(service.pre_route)
    rt.on_startup(service.startup)
    rt.add_task("flow-timeouts", service.timeout_loop)
