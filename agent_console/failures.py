"""Repeated failures raise the priority, and the handover says what failed.

A router *observer* (``Router.observe``) looks at every decision the bot takes in a conversation and sorts the
turn by the touchpoints the deciding step recorded:

* **failure** — ``unanswered`` (the default step only noted the message), ``kb_answer`` with outcome ``none``
  (a miss) or ``offered`` (low confidence: only choices), ``kb_feedback`` "not helpful", ``flow_invalid_answer``
  (a flow question answered wrongly; the flow gives up after its own ``max_attempts``), ``flow_error``;
* **success** — ``kb_feedback`` "helpful", ``flow_step`` / ``flow_completed`` (the flow moved on), and a
  confident ``kb_answer`` — which is provisional: "not helpful" on that answer continues the streak as if
  the answer had not happened;
* anything else (menus, commands, greetings) leaves the streak as it is.

The streak lives in the conversation's meta (``meta["failures"]``: count, the last few signals, and the
streak held back by a confident answer), written with the decision's own effects — no query of its own, so
the message hot path stays as it is. Every ``LOKET_REPEATED_FAILURES`` (default 3; 0 turns it off) failures
in a row raise the priority one step (normal → high → urgent) with a ``priority_raised`` touchpoint whose
reason is ``repeated_failures``. When the conversation is handed over, the handover record gets the streak
(``failures``, ``failed``) and the flow node the customer was at, so the agent sees why; the streak then
starts again.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from agent_console.escalation import raised_priority
from bot.effects import Custom, Decision, Effect, SetState, Touch, UpdateConversation
from bot.router import RouteContext

log = logging.getLogger("loket.console")

META_KEY = "failures"
DEFAULT_THRESHOLD = 3
MAX_SIGNALS = 5
FAILURE, SUCCESS, ANSWERED, UNHELPFUL, NEUTRAL = "failure", "success", "answered", "unhelpful", "neutral"


def threshold_from(env: dict[str, str]) -> int:
    raw = (env.get("LOKET_REPEATED_FAILURES") or "").strip()
    if not raw:
        return DEFAULT_THRESHOLD
    try:
        value = int(raw)
        if value < 0:
            raise ValueError(raw)
    except ValueError:
        log.warning("LOKET_REPEATED_FAILURES=%r is not a whole number ≥ 0; using %d (0 turns the rule off)",
                    raw, DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD
    return value


def _clip(value: Any, n: int = 200) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def signal_of(touch: Touch) -> tuple[str, dict[str, Any] | None]:
    """What one touchpoint says about the turn: (verdict, failure signal for the handover or None)."""
    p = touch.payload
    if touch.kind == "unanswered":
        return FAILURE, {"kind": "unanswered", "text": _clip(p.get("text"))}
    if touch.kind == "kb_answer":
        outcome = p.get("outcome")
        if outcome == "none":
            return FAILURE, {"kind": "kb_miss", "text": _clip(p.get("query"))}
        if outcome == "offered":
            return FAILURE, {"kind": "kb_low_confidence", "text": _clip(p.get("query")),
                             "confidence": p.get("confidence")}
        return ANSWERED, None
    if touch.kind == "kb_feedback":
        if p.get("helpful"):
            return SUCCESS, None
        return UNHELPFUL, {"kind": "kb_unhelpful", "article": _clip(p.get("article")), "text": _clip(p.get("query"))}
    if touch.kind == "flow_invalid_answer":
        return FAILURE, {"kind": "flow_invalid_answer", "flow": p.get("flow"), "node": p.get("node"),
                         "reason": p.get("reason")}
    if touch.kind == "flow_error":
        return FAILURE, {"kind": "flow_error", "flow": p.get("flow"), "node": p.get("node"),
                         "text": _clip(p.get("error"))}
    if touch.kind in {"flow_step", "flow_completed"}:
        return SUCCESS, None
    return NEUTRAL, None


def classify(decision: Decision) -> tuple[str, dict[str, Any] | None]:
    """The turn's verdict: a failure outweighs everything, then "not helpful", a success, a confident answer."""
    found: dict[str, dict[str, Any] | None] = {}
    for eff in decision.effects:
        if isinstance(eff, Touch):
            verdict, sig = signal_of(eff)
            found.setdefault(verdict, sig)
    for verdict in (FAILURE, UNHELPFUL, SUCCESS, ANSWERED):
        if verdict in found:
            return verdict, found[verdict]
    return NEUTRAL, None


def next_streak(streak: dict[str, Any] | None, verdict: str, signal: dict[str, Any] | None,
                at: str) -> dict[str, Any] | None:
    """The streak after one turn (pure). ``None``: no streak."""
    cur = dict(streak or {})
    count, signals, held = int(cur.get("count") or 0), list(cur.get("signals") or []), cur.get("held")
    if verdict == SUCCESS:
        return None
    if verdict == ANSWERED:  # provisional success: "not helpful" on this answer takes the streak back
        return {"count": 0, "signals": [], "held": {"count": count, "signals": signals}} if count else None
    if verdict in {FAILURE, UNHELPFUL}:
        if verdict == UNHELPFUL and held:
            count, signals = int(held.get("count") or 0), list(held.get("signals") or [])
        return {"count": count + 1, "signals": [*signals, {**(signal or {}), "at": at}][-MAX_SIGNALS:],
                "held": None}
    return streak


def _merge_meta(effects: list[Effect], meta: dict[str, Any]) -> list[Effect]:
    """Put ``meta`` into the decision's own UpdateConversation when it has one (one conversation write)."""
    for i, eff in enumerate(effects):
        if isinstance(eff, UpdateConversation):
            return [*effects[:i], replace(eff, meta={**eff.meta, **meta}), *effects[i + 1:]]
    return [*effects, UpdateConversation(meta=meta)]


def handover_details(ctx: RouteContext, streak: dict[str, Any] | None) -> dict[str, Any]:
    """What the agent should see about the bot's failures when the conversation is handed over."""
    details: dict[str, Any] = {}
    flow = ctx.conversation.flow or {}
    if flow.get("node"):
        details["flow_node"] = f"{flow.get('flow')}:{flow.get('node')}"
    if streak and streak.get("count"):
        details["failures"] = int(streak["count"])
        details["failed"] = list(streak.get("signals") or [])
    return details


def make_observer(threshold: int) -> Any:
    def observe(ctx: RouteContext, decision: Decision) -> Decision:
        if ctx.conversation.state != "bot":
            return decision
        before = ctx.conversation.meta.get(META_KEY)
        before = before if isinstance(before, dict) else None
        verdict, signal = classify(decision)
        streak = next_streak(before, verdict, signal, ctx.now.isoformat())
        effects = list(decision.effects)
        count = int((streak or {}).get("count") or 0)
        if threshold and verdict in {FAILURE, UNHELPFUL} and count and count % threshold == 0:
            new = raised_priority(ctx.conversation.priority)
            if new != ctx.conversation.priority:
                effects.append(Custom("console.raise_priority", {
                    "from": ctx.conversation.priority, "to": new, "reason": "repeated_failures",
                    "failures": count, "failed": list((streak or {}).get("signals") or [])}))
        queued = next((i for i, e in enumerate(effects) if isinstance(e, SetState) and e.state == "queued"), None)
        if queued is not None:
            eff = effects[queued]
            assert isinstance(eff, SetState)
            effects[queued] = replace(eff, details={**handover_details(ctx, streak), **eff.details})
            streak = None  # the person taking over starts afresh
        if streak != before:
            effects = _merge_meta(effects, {META_KEY: streak})
        if effects == decision.effects:
            return decision
        return Decision(effects=effects, step=decision.step)

    return observe
