"""Outbox dispatcher: retries with backoff, bounded give-up with a visible status, per-conversation order."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from sqlalchemy import select

from bot.channels.base import PermanentSendError, TransientSendError
from bot.dispatcher import backoff_delay
from bot.messages import OutboundMessage, ProviderReceipt
from storage.models import identities, messages, outbox_items, touchpoints
from tests.support import LoketServer, WebChatClient, wait_for


class FlakyChannel:
    """A provider that fails according to a script, standing in for the web chat channel's transport."""

    name = "webchat"

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[tuple[float, OutboundMessage]] = []

    def render(self, out: OutboundMessage) -> str:
        return out.reply.text

    async def send(self, out: OutboundMessage) -> ProviderReceipt:
        self.calls.append((time.monotonic(), out))
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, Exception):
            raise step
        return ProviderReceipt(provider_message_id=f"p-{out.message_id}", status="sent")


def test_backoff_is_jittered_capped_and_growing() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        for _ in range(50):
            d = backoff_delay(attempt, 0.5, 30.0, rng)
            assert 0.25 <= d <= min(30.0, 0.5 * 2 ** (attempt - 1)) + 1e-9
    late = [backoff_delay(10, 0.5, 30.0, rng) for _ in range(200)]
    early = [backoff_delay(1, 0.5, 30.0, rng) for _ in range(200)]
    assert sum(late) / 200 > 5 * (sum(early) / 200)
    assert len({round(x, 6) for x in late}) > 150  # jitter: not the same delay every time


async def test_transient_errors_are_retried_then_delivered(loket: LoketServer) -> None:
    flaky = FlakyChannel([TransientSendError("503 from provider"), TransientSendError("timeout"),
                          TransientSendError("429", retry_after=0.3)])
    loket.rt.channels.add(flaky)
    async with WebChatClient(loket.base_url) as chat:
        await chat.send_text("halo")
        rows = await wait_for(
            lambda: loket.fetch(select(messages.c.status, messages.c.channel_message_id)
                                .where(messages.c.direction == "out", messages.c.status == "sent")),
            timeout=15, what="delivery after retries")
    assert len(rows) == 1 and rows[0]["channel_message_id"].startswith("p-")
    assert len(flaky.calls) == 4
    # the 429's retry_after is honoured
    assert flaky.calls[3][0] - flaky.calls[2][0] >= 0.29
    out = (await loket.fetch(select(outbox_items)))[0]
    assert out["status"] == "sent" and out["attempts"] == 4


async def test_permanent_error_fails_visibly_and_marks_unreachable(loket: LoketServer) -> None:
    loket.rt.channels.add(FlakyChannel([PermanentSendError("bot was blocked by the user", unreachable=True)]))
    async with WebChatClient(loket.base_url) as chat:
        await chat.send_text("halo")
        row = await wait_for(
            lambda: loket.fetch(select(messages.c.status, messages.c.error)
                                .where(messages.c.direction == "out", messages.c.status == "failed")),
            what="failed status")
    assert row[0]["error"] == "bot was blocked by the user"
    ident = (await loket.fetch(select(identities)))[0]
    assert ident["unreachable"] and ident["unreachable_reason"] == "bot was blocked by the user"
    tps = await loket.fetch(select(touchpoints.c.payload).where(touchpoints.c.kind == "delivery"))
    assert tps[-1]["payload"]["status"] == "failed"


async def test_gives_up_after_bounded_attempts(settings_factory: Any) -> None:
    server = LoketServer(settings_factory(LOKET_DISPATCH_MAX_ATTEMPTS="3"))
    await server.start()
    try:
        flaky = FlakyChannel([TransientSendError("503")] * 10)
        server.rt.channels.add(flaky)
        async with WebChatClient(server.base_url) as chat:
            await chat.send_text("halo")
            row = await wait_for(
                lambda: server.fetch(select(messages.c.status, messages.c.error)
                                     .where(messages.c.direction == "out", messages.c.status == "failed")),
                timeout=15, what="give-up")
        assert row[0]["error"].startswith("gave up after 3 attempts")
        assert len(flaky.calls) == 3
    finally:
        await server.stop()


async def test_a_failing_conversation_does_not_hold_up_others(loket: LoketServer) -> None:
    class Selective(FlakyChannel):
        async def send(self, out: OutboundMessage) -> ProviderReceipt:
            self.calls.append((time.monotonic(), out))
            if out.address == slow_address[0]:
                await asyncio.sleep(0.2)
                raise TransientSendError("this customer's provider is down")
            return ProviderReceipt(provider_message_id=f"p-{out.message_id}")

    slow_address: list[str] = [""]
    chan = Selective([])
    loket.rt.channels.add(chan)
    async with WebChatClient(loket.base_url) as bad:
        from bot.channels.webchat import visitor_address

        slow_address[0] = visitor_address(bad.visitor or "")
        await bad.send_text("halo")
        await bad.send_text("halo lagi")
        clients = [WebChatClient(loket.base_url) for _ in range(5)]
        for c in clients:
            await c.connect()
            await c.send_text("halo")
        async def delivered() -> bool:
            rows = await loket.fetch(select(messages.c.id).where(messages.c.direction == "out",
                                                                 messages.c.status == "sent"))
            return len(rows) >= 5

        await wait_for(delivered, what="the other five conversations delivered")
        bad_failed = await loket.fetch(select(messages.c.id).where(messages.c.status == "failed"))
        assert bad_failed == []  # the others went out while the bad one was still retrying
        for c in clients:
            await c.close()
    # the failing conversation's second reply waits behind its first (order), never overtakes it
    bad_calls = [o.message_id for _, o in chan.calls if o.address == slow_address[0]]
    first = bad_calls[0]
    last_of_first = max(i for i, m in enumerate(bad_calls) if m == first)
    assert all(m == first for m in bad_calls[: last_of_first + 1])


async def test_send_results_that_arrive_together_are_recorded_together(loket: LoketServer) -> None:
    """At low load the recorder waits a moment for more results, so sends finishing a few ms apart share one
    write instead of one each. A write stamps its rows with one ``sent_at``: distinct stamps count the writes."""

    class Staggered(FlakyChannel):
        async def send(self, out: OutboundMessage) -> ProviderReceipt:
            self.calls.append((time.monotonic(), out))
            await asyncio.sleep(0.004 * len(self.calls))  # each send finishes 4 ms after the one before
            return ProviderReceipt(provider_message_id=f"p-{out.message_id}")

    chan = Staggered([])
    loket.rt.channels.add(chan)
    clients = [WebChatClient(loket.base_url) for _ in range(8)]
    for c in clients:
        await c.connect()
    try:
        await asyncio.gather(*(c.send_text("halo") for c in clients))
        rows = await wait_for(lambda: _all_sent(loket), timeout=15, what="every reply recorded as sent")
    finally:
        for c in clients:
            await c.close()
    assert len(rows) == len(chan.calls) >= 8
    writes = len({r["sent_at"] for r in rows})
    # one write per result: one stamp per row (with the window switched off: 6-8 stamps for 8 rows, measured)
    assert writes <= len(rows) // 2, (writes, len(rows))


async def _all_sent(loket: LoketServer) -> list[dict[str, Any]]:
    rows = await loket.fetch(select(outbox_items.c.status, outbox_items.c.sent_at))
    return rows if len(rows) >= 8 and all(r["status"] == "sent" for r in rows) else []
