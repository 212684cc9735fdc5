"""A test component for the fault suite: answers every text with ``echo <text>`` (before any other step), so
the fakes can check that each customer message got exactly its reply, in order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.effects import Decision, Send
from bot.messages import Reply
from bot.router import RouteContext

if TYPE_CHECKING:
    from bot.runtime import Runtime


async def echo_step(ctx: RouteContext) -> Decision | None:
    text = ctx.message.text or ""
    if not text.startswith("m "):
        return None
    return Decision(step="echo").add(Send(Reply(f"echo {text[2:]}")))


def setup(rt: Runtime) -> None:
    rt.router.add("fault_echo", echo_step, 1)
