"""``loket run`` routes a message in the transaction that stores it, when it is next in its conversation.

On PostgreSQL the statement that stores the batch decides which messages that transaction routes (nothing older
of the conversation waiting, its advisory lock taken) and inserts those as ``done``: their inbox rows are
written once. Whatever is left pending (a second message of a conversation in the same batch) is answered by the
claim loop, after the first, and a second copy of a message is stored and answered once, on both databases.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from sqlalchemy import event, func, select, update

from bot.effects import Decision
from bot.messages import InboundMessage
from bot.router import RouteContext
from storage.models import conversations, inbox_items, messages
from storage.unit_of_work import update_row
from tests.support import LoketServer, wait_for

_INBOX_UPDATE = re.compile(r'UPDATE\s+"?inbox_items"?', re.IGNORECASE)


def _msg(visitor: str, n: int, text: str = "halo") -> InboundMessage:
    return InboundMessage(channel="webchat", address=visitor, provider_message_id=f"{visitor}-{n}", text=text)


async def _answered(loket: LoketServer, replies: int) -> None:
    async def done() -> bool:
        out = await loket.scalar(select(func.count()).select_from(messages).where(messages.c.direction == "out"))
        return int(out) >= replies

    await wait_for(done)


async def test_messages_routed_as_they_are_stored_are_written_once(loket: LoketServer) -> None:
    statements: list[str] = []
    event.listen(loket.rt.engine.sync_engine, "before_cursor_execute",
                 lambda conn, cur, stmt, *a: statements.append(stmt))
    first = [_msg(f"once-{i}", 1) for i in range(12)]  # twelve conversations, one message each
    assert all(await asyncio.gather(*(loket.rt.inbox.submit(m) for m in first)))
    await _answered(loket, len(first))
    rows = await loket.fetch(select(inbox_items.c.status, inbox_items.c.attempts, inbox_items.c.processed_at))
    assert [(r["status"], r["attempts"]) for r in rows] == [("done", 1)] * len(first)
    assert all(r["processed_at"] is not None for r in rows)
    if loket.rt.engine.dialect.name == "postgresql":
        assert not [s for s in statements if _INBOX_UPDATE.search(s)], "an inbox row routed at receive was updated"


async def test_what_the_store_leaves_pending_is_answered_after_in_order_and_once(loket: LoketServer) -> None:
    batch = [_msg("pair", 1, "halo"), _msg("pair", 2, "menu"), _msg("solo", 1), _msg("copy", 1), _msg("copy", 1)]
    stored = await asyncio.gather(*(loket.rt.inbox.submit(m) for m in batch))
    assert stored == [True, True, True, True, False]  # the second copy is the duplicate, in or out of the batch
    await _answered(loket, 4)
    await asyncio.sleep(0.3)  # a duplicate answer would have been written by now
    rows = await loket.fetch(select(inbox_items.c.provider_message_id, inbox_items.c.status)
                             .order_by(inbox_items.c.id))
    assert [(r["provider_message_id"], r["status"]) for r in rows] == [
        ("pair-1", "done"), ("pair-2", "done"), ("solo-1", "done"), ("copy-1", "done")]
    msgs = await loket.fetch(select(messages.c.conversation_id, messages.c.direction, messages.c.body,
                                    messages.c.channel_message_id).order_by(messages.c.id))
    assert sum(m["direction"] == "out" for m in msgs) == 4
    pair_conv = next(m["conversation_id"] for m in msgs if m["channel_message_id"] == "pair-1")
    pair = [(m["direction"], m["channel_message_id"]) for m in msgs if m["conversation_id"] == pair_conv]
    # the second message is routed only after the first was answered: in, out, in, out
    assert [d for d, _ in pair] == ["in", "out", "in", "out"]
    assert [pmid for d, pmid in pair if d == "in"] == ["pair-1", "pair-2"]


async def test_the_router_sees_what_a_pre_route_hook_wrote(loket: LoketServer) -> None:
    """The batch's conversations are read after the pre-route hooks: when a hook writes to one (through the unit
    of work, or with a statement of its own), the router sees the conversation as the hook left it. (A change that
    read them with the identities, before the hooks, must read them again after a hook wrote.)"""
    seen: list[tuple[str, str, list[str]]] = []

    async def spy(ctx: RouteContext) -> Decision | None:
        seen.append((ctx.message.text, ctx.conversation.priority, ctx.conversation.labels))
        return None

    async def hook(conn: Any, msg: InboundMessage, identity: dict[str, Any], customer: dict[str, Any],
                   pipeline: Any) -> bool:
        newest = (await conn.execute(select(conversations.c.id).where(conversations.c.identity_id == identity["id"])
                                     .order_by(conversations.c.id.desc()).limit(1))).scalar()
        if newest is not None and msg.text == "urgent":  # written by the unit of work, with the batch
            await update_row(conn, conversations, newest, {"priority": "urgent"})
        elif newest is not None and msg.text == "vip":  # a statement of its own
            await conn.execute(update(conversations).where(conversations.c.id == newest).values(labels=["vip"]))
        return False  # neither changes the identity or the customer

    loket.rt.router.add("spy", spy, order=1)
    loket.rt.pipeline.pre_route_hooks.append(hook)
    for n, text in enumerate(["halo", "urgent", "vip", "lagi"], start=1):
        assert await loket.rt.inbox.submit(_msg("hooked", n, text))

        async def routed(n: int = n) -> bool:
            return len(seen) >= n

        await wait_for(routed)
    assert seen == [("halo", "normal", []), ("urgent", "urgent", []), ("vip", "urgent", ["vip"]),
                    ("lagi", "urgent", ["vip"])]
