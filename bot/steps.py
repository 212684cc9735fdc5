"""The core router steps: hand the message to a human, global commands, and the default answer."""

from __future__ import annotations

import re

from bot.effects import Decision, Emit, Send, SetFlow, SetState, Touch, UpdateCustomer
from bot.messages import Choice, Reply
from bot.router import ORDER_COMMANDS, ORDER_DEFAULT, ORDER_HUMAN, RouteContext, Router
from bot.texts import t

AGENT_WORDS = {"0", "agen", "agent", "cs", "petugas", "operator", "human", "manusia"}
MENU_WORDS = {"menu", "kembali", "back", "mulai ulang", "restart"}
STOP_WORDS = {"stop", "berhenti", "unsubscribe", "stop all"}
START_WORDS = {"mulai", "start", "subscribe", "/start"}

_norm_re = re.compile(r"[^\w\s/]", re.UNICODE)


def normalize_command(text: str) -> str:
    return " ".join(_norm_re.sub(" ", text.lower()).split())


def handover(ctx: RouteContext, reason: str, team: str | None = None, **details: object) -> Decision:
    """Queue the conversation for a human, telling the customer."""
    if ctx.conversation.state in {"queued", "assigned"}:
        return Decision().add(Send(Reply(t("already_queued", ctx.language), purpose="queue_status")))
    return Decision().add(
        SetState("queued", reason=reason, team=team, details=dict(details)),
        SetFlow(None),
        Touch("escalated", {"reason": reason, "team": team, **details}),
        Send(Reply(t("queued", ctx.language), purpose="queue_status")),
        Emit("conversation.escalated", {"reason": reason, "team": team}),
    )


async def human_step(ctx: RouteContext) -> Decision | None:
    """A conversation with a person: the message is for the agent console, the bot stays quiet."""
    if ctx.conversation.state not in {"queued", "assigned", "pending_customer"}:
        return None
    decision = Decision().add(Emit("message.for_agent", {"state": ctx.conversation.state}))
    if ctx.conversation.state == "pending_customer":
        decision.add(SetState("assigned", reason="customer_replied"))
    return decision


async def commands_step(ctx: RouteContext) -> Decision | None:
    cmd = normalize_command(ctx.text)
    if not cmd:
        return None
    if ctx.customer.opted_out:
        if cmd in START_WORDS:
            return Decision().add(
                UpdateCustomer(opted_out=False),
                Touch("opted_in", {"command": cmd}),
                Send(Reply(t("opted_in", ctx.language), purpose="opt_in")),
            )
        return None
    if cmd in AGENT_WORDS:
        return handover(ctx, reason="customer_asked", command=cmd)
    if cmd in STOP_WORDS:
        return Decision().add(
            UpdateCustomer(opted_out=True),
            SetFlow(None),
            Touch("opted_out", {"command": cmd}),
            Send(Reply(t("opted_out", ctx.language), purpose="opt_out")),
        )
    if cmd in MENU_WORDS:
        menu = ctx.services.get("main_menu")
        if menu is not None:
            decision: Decision | None = await menu(ctx)
            if decision is not None:
                return decision
        return Decision().add(SetFlow(None), Send(main_menu_reply(ctx)))
    return None


def main_menu_reply(ctx: RouteContext) -> Reply:
    lang = ctx.language
    return Reply(
        t("menu", lang),
        choices=(Choice(t("choice.agent", lang), "agent"),),
        purpose="menu",
    )


async def default_step(ctx: RouteContext) -> Decision | None:
    """Nothing else answered: greet a newcomer, otherwise record and offer a person."""
    lang = ctx.language
    if ctx.message.kind == "unsupported":
        return Decision().add(
            Touch("unsupported_content", {"detail": ctx.message.meta.get("unsupported")}),
            Send(Reply(t("unsupported", lang), purpose="reply")),
        )
    choices = (Choice(t("choice.agent", lang), "agent"), Choice(t("choice.menu", lang), "menu"))
    if ctx.conversation.is_new or ctx.conversation.reopened:
        name = f" {ctx.customer.display_name}" if ctx.customer.display_name else ""
        org = ctx.services.get("org_name", "Loket")
        return Decision().add(Send(Reply(t("greeting", lang, name=name, org=org), choices=choices)))
    return Decision().add(
        Touch("unanswered", {"text": ctx.message.text[:500]}),
        Send(Reply(t("noted", lang), choices=choices)),
    )


def install_core_steps(router: Router) -> None:
    router.add("human", human_step, ORDER_HUMAN)
    router.add("commands", commands_step, ORDER_COMMANDS)
    router.add("default", default_step, ORDER_DEFAULT)
