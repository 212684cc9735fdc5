"""Acting on a conversation from outside the inbound path: agents, the REST API, the scheduler.

``act_on_conversation`` applies effects (a reply, a state change, a note …) in one transaction, exactly as
the router's decisions are applied, then publishes the events and wakes the dispatcher. Before queueing a
reply it asks the channel whether the reply can go out at all (``precheck``: e.g. the WhatsApp 24-hour
window with no fitting template) so the agent or API caller sees a clear error instead of a silent drop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from bot.effects import Effect, Send
from bot.pipeline import ApplyContext
from storage.models import conversations, identities

if TYPE_CHECKING:
    from bot.runtime import Runtime


class SendRejected(Exception):
    """The channel cannot deliver this reply now; the message says why and what to do."""

    def __init__(self, reason: str, code: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class ConversationNotFound(Exception):
    pass


async def act_on_conversation(rt: Runtime, conversation_id: int, effects: list[Effect]) -> list[int]:
    """Apply effects to a conversation; returns the ids of the outbound messages created."""
    events: list[tuple[str, dict[str, Any]]] = []
    async with rt.engine.begin() as conn:
        conv = (
            await conn.execute(select(conversations).where(conversations.c.id == conversation_id))
        ).mappings().first()
        if conv is None:
            raise ConversationNotFound(f"no conversation with id {conversation_id}")
        ident = dict(
            (await conn.execute(select(identities).where(identities.c.id == conv["identity_id"]))).mappings().one()
        )
        channel = rt.channels.get(conv["channel"])
        for eff in effects:
            if isinstance(eff, Send) and channel is not None and hasattr(channel, "precheck"):
                problem = channel.precheck(eff.reply, ident, rt.clock.now())
                if problem:
                    raise SendRejected(problem, code="window_closed")
        actx = ApplyContext(conn=conn, now=rt.clock.now(), customer_id=conv["customer_id"],
                            conversation_id=conversation_id, identity=ident, channel=conv["channel"],
                            message_id=None, events=events)
        await rt.pipeline.apply(actx, effects, state_before=conv["state"])
        await rt.pipeline.run_sinks(conn, events, actx.now)
        created = list(actx.created)
    await rt.events.publish(events)
    rt.dispatcher.nudge()
    return created


async def open_conversation_for(rt: Runtime, customer_id: int, channel: str) -> int:
    """The customer's open conversation on ``channel`` (new if none), for proactive messages."""
    async with rt.engine.begin() as conn:
        ident = (
            await conn.execute(
                select(identities)
                .where(identities.c.customer_id == customer_id, identities.c.channel == channel)
                .order_by(identities.c.unreachable, identities.c.id.desc())
                .limit(1)
            )
        ).mappings().first()
        if ident is None:
            raise ConversationNotFound(f"customer {customer_id} has no {channel} identity")
        from storage.models import customers

        cust = (await conn.execute(select(customers).where(customers.c.id == customer_id))).mappings().one()
        conv, _, _ = await rt.pipeline.open_conversation(conn, dict(ident), dict(cust), rt.clock.now())
        return int(conv["id"])
