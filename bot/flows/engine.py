"""The flow engine: from (flow definition, position, customer input) to effects.

A turn walks nodes until one waits for the customer (``ask``, ``menu``) or the flow ends (``end``,
``handover``, ``search_kb``, a ``say`` without ``next``). The position — flow id, version, node, slots,
attempts, times — is stored on the conversation with ``SetFlow`` in the same transaction as the replies.
The only I/O happens in ``call`` and ``search_kb`` nodes, through injected services with timeouts; a failure
there gives the customer a polite text and the timeline a ``flow_error`` touchpoint, never a silent stall.
"""

from __future__ import annotations

import asyncio
import logging
import re
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.effects import Decision, Effect, Send, SetFlow, SetState, Touch, UpdateConversation, UpdateCustomer
from bot.flows.loader import FlowDef
from bot.flows.rasa import RasaActionError, run_action
from bot.flows.registry import FlowRegistry
from bot.flows.validators import Invalid, match_option, validate
from bot.handlers import registry as handlers
from bot.handlers.registry import HandlerContext, HandlerError
from bot.messages import Choice, Reply
from bot.router import RouteContext
from bot.steps import handover
from bot.texts import t

log = logging.getLogger("loket.flows")

MAX_STEPS_PER_TURN = 50
DEFAULT_ATTEMPTS = 3
DEFAULT_CALL_TIMEOUT = 5.0
PAYLOAD_PREFIX = "f:"
WEEKDAY_KEYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# The routing transaction's connection, set by a pre-route hook so handlers can read in the same transaction.
current_conn: ContextVar[Any] = ContextVar("loket_flows_conn", default=None)

_placeholder = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")


def option_payload(flow_id: str, node_id: str, value: str) -> str:
    return f"{PAYLOAD_PREFIX}{flow_id}:{node_id}:{value}"


def parse_payload(text: str | None) -> tuple[str, str, str] | None:
    if not text or not text.startswith(PAYLOAD_PREFIX):
        return None
    parts = text[len(PAYLOAD_PREFIX):].split(":", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def lookup(data: dict[str, Any], dotted: str) -> Any:
    cur: Any = data
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


def is_open(spec: dict[str, Any], now: datetime) -> bool:
    """Business hours: weekly ranges in the schedule's timezone, closed on listed holidays."""
    local = now.astimezone(ZoneInfo(spec.get("timezone", "Asia/Jakarta")))
    if local.date().isoformat() in {str(d) for d in spec.get("holidays") or []}:
        return False
    ranges = (spec.get("weekly") or {}).get(WEEKDAY_KEYS[local.weekday()], [])
    ranges = [ranges] if isinstance(ranges, str) else ranges
    hm = f"{local.hour:02d}:{local.minute:02d}"
    for r in ranges:
        if str(r).strip().lower() == "closed":
            continue
        start, end = (p.strip() for p in str(r).split("-", 1))
        if start <= hm < end:
            return True
    return False


class Turn:
    """One customer message (or a start) worked through a flow."""

    def __init__(self, ctx: RouteContext, registry: FlowRegistry, flow: FlowDef, position: dict[str, Any] | None,
                 lang: str) -> None:
        self.ctx = ctx
        self.registry = registry
        self.flow = flow
        pos = position or {}
        self.slots: dict[str, Any] = dict(pos.get("slots") or {})
        self.attempts = int(pos.get("attempts") or 0)
        self.started_at: str = pos.get("started_at") or ctx.now.isoformat()
        self.lang = lang
        # the customer as this turn changes it (handlers' UpdateCustomer effects apply at commit)
        self.attributes: dict[str, Any] = dict(ctx.customer.attributes)
        self.tags: set[str] = {str(x).lower() for x in ctx.customer.tags}
        self.effects: list[Effect] = []
        self.waiting: str | None = None
        self.handed_over = False
        self.steps = 0

    # ------------------------------------------------------------------ texts
    def values(self) -> dict[str, Any]:
        name = self.ctx.customer.display_name or ""
        return {**self.attributes, "customer_name": name,
                "customer_name_sep": f" {name}" if name else "", **self.slots}

    def render(self, text: Any) -> str:
        if text is None:
            return ""
        raw = text.get(self.lang) or text.get("id") or next(iter(text.values()), "") if isinstance(text, dict) \
            else str(text)
        vals = self.values()

        def sub(m: re.Match[str]) -> str:
            v = lookup(vals, m.group(1))
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 1000:
                return f"{v:,}".replace(",", ".")
            return "" if v is None else str(v)

        return _placeholder.sub(sub, str(raw))

    def render_arg(self, value: Any) -> Any:
        if isinstance(value, str):
            m = _placeholder.fullmatch(value.strip())
            if m:
                return lookup(self.values(), m.group(1))
            return self.render(value)
        if isinstance(value, list):
            return [self.render_arg(v) for v in value]
        if isinstance(value, dict):
            return {k: self.render_arg(v) for k, v in value.items()}
        return value

    def say(self, text: str, choices: tuple[Choice, ...] = (), purpose: str = "reply") -> None:
        if text.strip() or choices:
            self.effects.append(Send(Reply(text, choices=choices, purpose=purpose,
                                           meta={"flow": self.flow.id, "version": self.flow.version})))

    def options(self, node_id: str) -> list[dict[str, Any]]:
        return list(self.flow.nodes[node_id].get("options") or [])

    def choices(self, node_id: str) -> tuple[Choice, ...]:
        return tuple(
            Choice(self.render(opt.get("label")), option_payload(self.flow.id, node_id, str(opt.get("value",
                                                                                                    opt.get("goto")))))
            for opt in self.options(node_id)
        )

    def option_index(self, node_id: str) -> list[tuple[str, list[str]]]:
        out = []
        for opt in self.options(node_id):
            value = str(opt.get("value", opt.get("goto")))
            labels = [str(v) for v in (opt.get("label") or {}).values()] + [str(a) for a in opt.get("aliases") or []]
            out.append((value, labels))
        return out

    # ------------------------------------------------------------------ walking
    def position(self) -> dict[str, Any] | None:
        if self.waiting is None:
            return None
        now = self.ctx.now
        return {
            "flow": self.flow.id, "version": self.flow.version, "node": self.waiting, "slots": self.slots,
            "attempts": self.attempts, "lang": self.lang, "started_at": self.started_at,
            "last_activity": now.isoformat(),
            "expires_at": (now + timedelta(seconds=self.flow.timeout_seconds)).isoformat(),
        }

    def finish(self) -> Decision:
        if not self.handed_over:
            self.effects.append(SetFlow(self.position()))
        return Decision(effects=self.effects, step="flow")

    def prompt(self, node_id: str) -> None:
        node = self.flow.nodes[node_id]
        self.say(self.render(node.get("text")), self.choices(node_id) if node.get("options") else (),
                 purpose="flow_question")
        self.effects.append(Touch("flow_step", {"flow": self.flow.id, "version": self.flow.version,
                                                "node": node_id}))
        self.waiting = node_id

    async def run(self, node_id: str | None) -> None:
        """Walk from ``node_id`` until a node waits for the customer or the flow ends."""
        self.waiting = None
        while node_id is not None:
            self.steps += 1
            if self.steps > MAX_STEPS_PER_TURN:
                log.error("flow %s@%s loops without waiting for the customer at node %s",
                          self.flow.id, self.flow.version, node_id)
                self.effects.append(Touch("flow_error", {"flow": self.flow.id, "node": node_id,
                                                          "error": "loop without a question"}))
                self.fail_over("flow_loop")
                return
            node = self.flow.nodes[node_id]
            kind = node["type"]
            if kind == "say":
                self.say(self.render(node.get("text")))
                node_id = node.get("next")
            elif kind in ("ask", "menu"):
                self.attempts = 0
                self.prompt(node_id)
                return
            elif kind == "branch":
                node_id = self.branch(node)
            elif kind == "call":
                node_id = await self.call(node_id, node)
            elif kind == "search_kb":
                node_id = await self.search_kb(node_id, node)
            elif kind == "handover":
                self.say(self.render(node.get("text")))
                self.hand_over(str(node.get("reason") or f"flow:{self.flow.id}:{node_id}"), node.get("team"),
                               include=node.get("include"), priority=node.get("priority"))
                return
            elif kind == "goto":
                if node.get("flow"):
                    other = self.registry.latest(str(node["flow"]))
                    if other is None:
                        self.fail_over("flow_missing")
                        return
                    self.flow = other
                    self.started_at = self.ctx.now.isoformat()
                    node_id = other.start
                else:
                    node_id = node.get("goto")
            elif kind == "end":
                self.say(self.render(node.get("text")))
                self.effects.append(Touch("flow_completed", {"flow": self.flow.id, "version": self.flow.version,
                                                             "node": node_id}))
                return
            else:  # the loader refuses unknown types
                raise ValueError(f"unknown node type {kind!r}")

    def hand_over(self, reason: str, team: str | None, include: list[str] | None = None,
                  priority: str | None = None) -> None:
        details: dict[str, Any] = {"flow": self.flow.id, "version": self.flow.version}
        if include:
            details["slots"] = {k: self.slots.get(k) for k in include}
        if priority:
            self.effects.append(UpdateConversation(priority=priority))
        self.effects.extend(handover(self.ctx, reason=reason, team=team, **details).effects)
        self.handed_over = True
        self.waiting = None

    def fail_over(self, reason: str) -> None:
        self.hand_over(reason, None)

    # ------------------------------------------------------------------ branch
    def branch(self, node: dict[str, Any]) -> str:
        for case in node.get("cases") or []:
            if self.test(case["if"]):
                return str(case["goto"])
        return str(node["else"])

    def test(self, cond: dict[str, Any]) -> bool:
        if "hours" in cond:
            spec = cond["hours"]
            spec = self.flow.hours.get(spec, {}) if isinstance(spec, str) else spec
            return is_open(spec, self.ctx.now) == bool(cond.get("open", True))
        if "tag" in cond:
            return str(cond["tag"]).lower() in self.tags
        if "slot" in cond:
            value = lookup(self.slots, str(cond["slot"]))
        elif "attribute" in cond:
            value = lookup(self.attributes, str(cond["attribute"]))
        elif "language" in cond:
            value = self.lang
            if not any(op in cond for op in ("equals", "not_equals", "in")):
                return self.lang == str(cond["language"])
        else:
            value = self.ctx.conversation.channel
            if not any(op in cond for op in ("equals", "not_equals", "in")):
                return value == str(cond["channel"])
        return compare(value, cond)

    # ------------------------------------------------------------------ call
    async def call(self, node_id: str, node: dict[str, Any]) -> str | None:
        timeout = float(node.get("timeout") or DEFAULT_CALL_TIMEOUT)
        target = node.get("handler") or node.get("rasa_action")
        try:
            if node.get("rasa_action"):
                result = await asyncio.wait_for(
                    run_action(str(node["url"]), str(node["rasa_action"]), f"loket-{self.ctx.conversation.id}",
                               self.slots, self.ctx.raw_text, self.ctx.now, timeout=timeout),
                    timeout=timeout + 1,
                )
                if result.reset:
                    self.slots.clear()
                self.slots.update(result.slots)
                for reply in result.replies:
                    self.effects.append(Send(reply))
                data: dict[str, Any] = {"slots": result.slots}
            else:
                fn = handlers.get(str(node["handler"]))
                if fn is None and node.get("if_missing"):
                    return str(node["if_missing"])
                if fn is None:
                    raise HandlerError(f"handler {node['handler']!r} is not registered")
                hctx = HandlerContext(
                    args=self.render_arg(dict(node.get("args") or {})), slots=dict(self.slots),
                    customer_id=self.ctx.customer.id, customer_language=self.ctx.customer.language,
                    customer_timezone=self.ctx.customer.timezone,
                    customer_attributes=dict(self.attributes),
                    conversation_id=self.ctx.conversation.id, channel=self.ctx.conversation.channel,
                    language=self.lang, flow_id=self.flow.id, node_id=node_id, now=self.ctx.now,
                    services=self.ctx.services, conn=current_conn.get(),
                )
                data = await asyncio.wait_for(fn(hctx), timeout=timeout)
                if not isinstance(data, dict):
                    raise HandlerError(f"handler {node['handler']!r} returned {type(data).__name__}, not a dict")
                self.effects.extend(hctx.effects)
                for eff in hctx.effects:
                    if isinstance(eff, UpdateCustomer):
                        self.attributes.update(eff.attributes)
                        self.tags.update(t.lower() for t in eff.add_tags)
                self.slots[str(node.get("save") or node_id)] = data
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the customer is never left hanging
            reason = "timed out" if isinstance(exc, TimeoutError) else getattr(exc, "reason", None) or str(exc)
            if not isinstance(exc, TimeoutError | HandlerError | RasaActionError):
                log.exception("flow %s node %s: %s failed", self.flow.id, node_id, target)
            else:
                log.warning("flow %s node %s: %s failed: %s", self.flow.id, node_id, target, reason)
            self.effects.append(Touch("flow_error", {"flow": self.flow.id, "version": self.flow.version,
                                                      "node": node_id, "call": target, "error": str(reason)[:500]}))
            error_text = node.get("error") or self.flow.default_error
            self.say(self.render(error_text) if error_text else t("flows.call_failed", self.lang))
            if node.get("on_error"):
                return str(node["on_error"])
            self.fail_over("handler_failed")
            return None
        self.effects.append(Touch("flow_call", {"flow": self.flow.id, "node": node_id, "call": target}))
        return node.get("next")

    # ------------------------------------------------------------------ knowledge base
    async def search_kb(self, node_id: str, node: dict[str, Any]) -> str | None:
        query = self.render(node["query"]) if node.get("query") else self.ctx.raw_text
        kb = self.ctx.services.get("kb_answer")
        decision = None
        if kb is not None and query.strip():
            try:
                decision = await asyncio.wait_for(kb(self.ctx, query), timeout=DEFAULT_CALL_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - the knowledge base is optional, the customer must get an answer
                log.warning("knowledge base failed for flow %s node %s: %s", self.flow.id, node_id, exc)
                self.effects.append(Touch("flow_error", {"flow": self.flow.id, "node": node_id,
                                                          "call": "kb_answer", "error": str(exc)[:500]}))
        if decision is not None and decision.effects:
            self.effects.extend(e for e in decision.effects if not isinstance(e, SetFlow))
            if any(isinstance(e, SetState) for e in decision.effects):
                self.handed_over = True
                return None
            return node.get("next")
        if node.get("on_miss"):
            return str(node["on_miss"])
        self.say(self.render(node["text"]) if node.get("text") else t("flows.kb_no_answer", self.lang))
        self.hand_over("kb_no_answer", node.get("team"), include=node.get("include"))
        return None

    # ------------------------------------------------------------------ input
    async def answer(self, node_id: str) -> None:
        """The customer answered the question at ``node_id``."""
        node = self.flow.nodes[node_id]
        ctx = self.ctx
        payload = parse_payload(ctx.text)
        if payload and (payload[0], payload[1]) != (self.flow.id, node_id):
            await self.stale_button(node_id, payload)
            return
        spec = node.get("validate") or {"type": "text"}
        spec = {"type": spec} if isinstance(spec, str) else spec  # `validate: number` is short for {type: number}
        if node["type"] == "menu" or spec.get("type") == "choice":
            value = payload[2] if payload else match_option(ctx.raw_text, self.option_index(node_id))
            known = {v for v, _ in self.option_index(node_id)}
            if value is None or value not in known:
                await self.retry(node_id, "not_an_option")
                return
            await self.choose(node_id, value)
            return
        answer = ctx.message.button_payload or ctx.raw_text
        result = validate(answer, spec, ctx.now, ctx.customer.timezone or "Asia/Jakarta")
        if isinstance(result, Invalid):
            await self.retry(node_id, result.reason)
            return
        self.slots[str(node["save"])] = result.value
        self.slots[f"{node['save']}_display"] = result.display
        self.attempts = 0
        await self.run(node.get("next"))

    async def choose(self, node_id: str, value: str) -> None:
        node = self.flow.nodes[node_id]
        opt = next(o for o in self.options(node_id) if str(o.get("value", o.get("goto"))) == value)
        self.attempts = 0
        if node.get("save"):
            self.slots[str(node["save"])] = value
            self.slots[f"{node['save']}_label"] = self.slots[f"{node['save']}_display"] = \
                self.render(opt.get("label"))
        if opt.get("language") and opt["language"] != self.lang:
            self.lang = str(opt["language"])
            self.effects.append(UpdateCustomer(language=self.lang))
        if node["type"] == "menu":
            await self.run(str(opt["goto"]))
        else:
            await self.run(node.get("next"))

    async def retry(self, node_id: str, reason: str) -> None:
        node = self.flow.nodes[node_id]
        self.attempts += 1
        self.effects.append(Touch("flow_invalid_answer", {"flow": self.flow.id, "node": node_id, "reason": reason,
                                                          "attempt": self.attempts}))
        if self.attempts >= int(node.get("max_attempts") or DEFAULT_ATTEMPTS):
            self.say(t("flows.too_many_attempts", self.lang))
            if node.get("on_fail"):
                self.attempts = 0
                await self.run(str(node["on_fail"]))
            else:
                self.hand_over("flow_failed", None)
            return
        error = node.get("error") or self.flow.default_error
        text = self.render(error) if error else t(f"flows.invalid.{reason}", self.lang) \
            if f"flows.invalid.{reason}" in _INVALID_KEYS else t("flows.invalid.generic", self.lang)
        prompt = self.render(node.get("text"))
        self.say(f"{text}\n\n{prompt}", self.choices(node_id) if node.get("options") else (), purpose="flow_question")
        self.waiting = node_id

    async def stale_button(self, node_id: str, payload: tuple[str, str, str]) -> None:
        """A button from an earlier message: honour it when its menu still exists, else re-ask politely."""
        flow_id, old_node, value = payload
        flow = self.flow if flow_id == self.flow.id else self.registry.latest(flow_id)
        self.effects.append(Touch("flow_stale_button", {"flow": flow_id, "node": old_node, "value": value,
                                                        "current": node_id}))
        if flow is not None and old_node in flow.nodes and flow.nodes[old_node]["type"] == "menu" and any(
                str(o.get("value", o.get("goto"))) == value for o in flow.nodes[old_node].get("options") or []):
            if flow is not self.flow:
                self.flow = flow
                self.started_at = self.ctx.now.isoformat()
            await self.choose(old_node, value)
            return
        self.say(t("flows.stale_button", self.lang))
        self.prompt(node_id)


_INVALID_KEYS = {
    f"flows.invalid.{k}" for k in (
        "not_an_option", "not_a_number", "not_whole", "too_small", "too_large", "not_a_phone", "not_an_email",
        "not_a_date", "not_a_time", "bad_time", "in_past", "need_time", "too_short", "too_long", "no_match", "empty",
    )
}


def compare(value: Any, cond: dict[str, Any]) -> bool:
    def norm(v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    if "exists" in cond:
        return (value is not None and value != "" and value != []) == bool(cond["exists"])
    if "equals" in cond:
        return norm(value) == norm(cond["equals"])
    if "not_equals" in cond:
        return norm(value) != norm(cond["not_equals"])
    if "in" in cond:
        return norm(value) in {norm(v) for v in (cond["in"] or [])}
    if "matches" in cond:
        return value is not None and re.search(str(cond["matches"]), str(value)) is not None
    for op, fn in (("gt", float.__gt__), ("gte", float.__ge__), ("lt", float.__lt__), ("lte", float.__le__)):
        if op in cond:
            try:
                return bool(fn(float(value), float(cond[op])))
            except (TypeError, ValueError):
                return False
    return bool(value)


async def start_flow(ctx: RouteContext, registry: FlowRegistry, flow: FlowDef, reason: str,
                     lang: str | None = None) -> Decision:
    turn = Turn(ctx, registry, flow, None, lang or ctx.language)
    turn.effects.append(Touch("flow_started", {"flow": flow.id, "version": flow.version, "reason": reason}))
    await turn.run(flow.start)
    return turn.finish()


async def continue_flow(ctx: RouteContext, registry: FlowRegistry, position: dict[str, Any]) -> Decision | None:
    """Feed the customer's message to the node the conversation waits at. ``None``: the position is unusable."""
    flow = registry.get(str(position.get("flow")), int(position.get("version") or 0))
    node_id = str(position.get("node"))
    if flow is None or node_id not in flow.nodes:
        latest = registry.latest(str(position.get("flow")))
        if latest is None or node_id not in latest.nodes:
            return None
        log.warning("flow %s version %s is not loaded; continuing on version %s",
                    position.get("flow"), position.get("version"), latest.version)
        flow = latest
    turn = Turn(ctx, registry, flow, position, str(position.get("lang") or ctx.language))
    await turn.answer(node_id)
    return turn.finish()


async def start_from_button(ctx: RouteContext, registry: FlowRegistry,
                            payload: tuple[str, str, str]) -> Decision | None:
    """A flow button pressed after its flow ended: run that option when the menu still exists."""
    flow = registry.latest(payload[0])
    if flow is None or payload[1] not in flow.nodes or flow.nodes[payload[1]]["type"] != "menu":
        return None
    turn = Turn(ctx, registry, flow, None, ctx.language)
    if not any(str(o.get("value", o.get("goto"))) == payload[2] for o in turn.options(payload[1])):
        return None
    turn.effects.append(Touch("flow_started", {"flow": flow.id, "version": flow.version, "reason": "button"}))
    await turn.choose(payload[1], payload[2])
    return turn.finish()
