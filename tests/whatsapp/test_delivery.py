"""WhatsApp sending: retries on 429/5xx, permanent failures, status callbacks, the 24-hour window."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.effects import Send
from bot.messages import Reply
from bot.outbound import SendRejected, act_on_conversation
from storage.models import conversations, identities, messages, outbox_items, touchpoints
from tests.support import wait_for
from tests.whatsapp.conftest import CUSTOMER, REMINDER_TEMPLATE, WhatsAppEnv


async def first_reply(wa: WhatsAppEnv, text: str = "halo") -> dict[str, Any]:
    """Customer writes; returns the bot's reply row once it is recorded as sent or failed."""
    await wa.fake.send_inbound(wa.webhook, CUSTOMER, text)

    async def done() -> list[dict[str, Any]]:
        return await wa.loket.fetch(
            select(messages).where(messages.c.direction == "out", messages.c.status.in_(("sent", "failed")))
        )

    return (await wait_for(done, timeout=15, what="reply sent or failed"))[0]


async def delivery_touchpoints(wa: WhatsAppEnv, message_id: int) -> list[dict[str, Any]]:
    rows = await wa.loket.fetch(
        select(touchpoints.c.payload).where(touchpoints.c.kind == "delivery", touchpoints.c.message_id == message_id)
        .order_by(touchpoints.c.id)
    )
    return [r["payload"] for r in rows]


async def test_429_with_retry_after_is_sent_once_after_the_delay(wa: WhatsAppEnv) -> None:
    wa.fake.fail_next(1, 429, retry_after=1)
    row = await first_reply(wa)
    assert row["status"] == "sent"
    assert wa.fake.attempts == 2
    assert len(wa.fake.messages) == 1
    gap = wa.fake.attempt_times[1] - wa.fake.attempt_times[0]
    assert gap >= 0.95, gap
    outbox = (await wa.loket.fetch(select(outbox_items)))[0]
    assert outbox["attempts"] == 2 and outbox["status"] == "sent"


async def test_burst_of_5xx_is_delivered_after_recovery(wa: WhatsAppEnv) -> None:
    wa.fake.fail_next(4, 503)
    row = await first_reply(wa)
    assert row["status"] == "sent" and row["error"] is None
    assert wa.fake.attempts == 5 and len(wa.fake.messages) == 1
    assert row["channel_message_id"] == wa.fake.messages[0].sid


async def test_slow_twilio_still_delivers(wa: WhatsAppEnv) -> None:
    wa.fake.delay = 0.5
    row = await first_reply(wa)
    assert row["status"] == "sent" and len(wa.fake.messages) == 1


async def test_permanent_failure_is_visible_with_a_readable_reason(wa: WhatsAppEnv) -> None:
    wa.fake.fail_next(1, 400, code=21610, message="Attempt to send to unsubscribed recipient")
    row = await first_reply(wa)
    assert row["status"] == "failed"
    assert "unsubscribed" in row["error"] and "21610" in row["error"]
    assert wa.fake.attempts == 1 and wa.fake.messages == []
    ident = (await wa.loket.fetch(select(identities)))[0]
    assert ident["unreachable"] and "unsubscribed" in ident["unreachable_reason"]
    tps = await delivery_touchpoints(wa, row["id"])
    assert tps[-1]["status"] == "failed" and "unsubscribed" in tps[-1]["error"]


async def test_status_callbacks_move_the_message_and_timeline_forward_only(wa: WhatsAppEnv) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def on_event(name: str, payload: dict[str, Any]) -> None:
        if name == "message.status":
            seen.append((name, payload))

    wa.loket.rt.events.subscribe(on_event)
    row = await first_reply(wa)
    sid = row["channel_message_id"]
    for status in ("queued", "sent", "delivered", "read"):
        code, _, _ = await wa.fake.send_status(wa.status_url, sid, status)
        assert code == 200
    msg = (await wa.loket.fetch(select(messages).where(messages.c.id == row["id"])))[0]
    assert msg["status"] == "read" and msg["delivered_at"] is not None
    # a late "sent", a late "delivered" and a duplicate "read" change nothing
    for status in ("sent", "delivered", "read", "read"):
        await wa.fake.send_status(wa.status_url, sid, status)
    msg = (await wa.loket.fetch(select(messages).where(messages.c.id == row["id"])))[0]
    assert msg["status"] == "read"
    tps = await delivery_touchpoints(wa, row["id"])
    assert [t["status"] for t in tps] == ["sent", "delivered", "read"]
    assert tps[1]["provider_status"] == "delivered" and tps[1]["provider_message_id"] == sid
    await wait_for(lambda: asyncio.sleep(0, len(seen) >= 3), what="message.status events")
    assert [p["status"] for _, p in seen] == ["sent", "delivered", "read"]
    assert all(p["message_id"] == row["id"] for _, p in seen)


async def test_failed_callback_with_unreachable_code_marks_identity(wa: WhatsAppEnv) -> None:
    row = await first_reply(wa)
    sid = row["channel_message_id"]
    await wa.fake.send_status(wa.status_url, sid, "sent")
    await wa.fake.send_status(wa.status_url, sid, "undelivered", error_code=63003)
    await wa.fake.send_status(wa.status_url, sid, "undelivered", error_code=63003)
    msg = (await wa.loket.fetch(select(messages).where(messages.c.id == row["id"])))[0]
    assert msg["status"] == "failed"
    assert "not a WhatsApp user" in msg["error"] and "63003" in msg["error"]
    ident = (await wa.loket.fetch(select(identities)))[0]
    assert ident["unreachable"]
    tps = await delivery_touchpoints(wa, row["id"])
    assert [t["status"] for t in tps] == ["sent", "failed"]
    assert tps[-1]["error_code"] == 63003
    # a later message from the customer makes them reachable again (core) and gets answered
    n = len(wa.fake.messages)
    await wa.fake.send_inbound(wa.webhook, CUSTOMER, "halo lagi")
    await wait_for(lambda: asyncio.sleep(0, len(wa.fake.messages) > n), what="answer after reachable again")


async def test_transient_callback_codes_do_not_mark_unreachable(wa: WhatsAppEnv) -> None:
    row = await first_reply(wa)
    await wa.fake.send_status(wa.status_url, row["channel_message_id"], "undelivered", error_code=30003)
    msg = (await wa.loket.fetch(select(messages).where(messages.c.id == row["id"])))[0]
    assert msg["status"] == "failed" and "phone is off" in msg["error"]
    assert not (await wa.loket.fetch(select(identities)))[0]["unreachable"]


async def conversation_id(wa: WhatsAppEnv) -> int:
    return int((await wa.loket.fetch(select(conversations.c.id)))[0]["id"])


async def out_count(wa: WhatsAppEnv) -> tuple[int, int]:
    n_msgs = await wa.loket.scalar(select(func.count()).select_from(messages).where(messages.c.direction == "out"))
    n_outbox = await wa.loket.scalar(select(func.count()).select_from(outbox_items))
    return int(n_msgs), int(n_outbox)


async def test_outside_the_window_a_reminder_goes_as_template(wa: WhatsAppEnv) -> None:
    await first_reply(wa)
    conv = await conversation_id(wa)
    wa.clock.advance(timedelta(hours=25))
    reminder = Reply("Pengingat janji temu besok 10:00", purpose="appointment_reminder", author="system",
                     template_variables={"1": "Budi", "2": "besok 10:00"})
    created = await act_on_conversation(wa.loket.rt, conv, [Send(reminder)])
    assert len(created) == 1
    await wait_for(lambda: asyncio.sleep(0, len(wa.fake.messages) == 2), what="template at the fake")
    tmpl = wa.fake.messages[1]
    assert tmpl.to == CUSTOMER and tmpl.content_sid == REMINDER_TEMPLATE and tmpl.body is None
    assert json.loads(tmpl.get("ContentVariables") or "") == {"1": "Budi", "2": "besok 10:00"}
    assert tmpl.resource["status"] == "queued"  # the fake's window rule let the template through
    row = await wait_for(
        lambda: wa.loket.fetch(select(messages).where(messages.c.id == created[0], messages.c.status == "sent")),
        what="template recorded as sent",
    )
    assert row[0]["channel_message_id"] == tmpl.sid


async def test_outside_the_window_without_template_is_rejected_and_nothing_queued(wa: WhatsAppEnv) -> None:
    await first_reply(wa)
    conv = await conversation_id(wa)
    before = await out_count(wa)
    wa.clock.advance(timedelta(hours=24, minutes=1))
    with pytest.raises(SendRejected) as err:
        await act_on_conversation(wa.loket.rt, conv, [Send(Reply("Ada yang bisa dibantu?", author="agent"))])
    assert "24 hours" in err.value.reason and "TWILIO_TEMPLATES" in err.value.reason
    assert "'reply'" in err.value.reason and err.value.code == "window_closed"
    assert await out_count(wa) == before
    await asyncio.sleep(0.3)
    assert len(wa.fake.messages) == 1 and wa.fake.attempts == 1
    # inside the window the same agent reply goes out free-form
    wa.clock.advance(timedelta(hours=-2))
    created = await act_on_conversation(wa.loket.rt, conv, [Send(Reply("Ada yang bisa dibantu?", author="agent"))])
    await wait_for(lambda: asyncio.sleep(0, len(wa.fake.messages) == 2), what="free-form reply")
    assert wa.fake.messages[1].body == "Ada yang bisa dibantu?" and wa.fake.messages[1].content_sid is None
    assert created


async def test_window_closing_while_queued_fails_with_the_same_reason(wa_factory: Any) -> None:
    # a long give-up age, so the 25 hours we skip do not end the retries before the window rule does
    wa = await wa_factory(LOKET_DISPATCH_MAX_AGE_SECONDS="400000")
    wa.fake.fail_next(6, 503)
    await wa.fake.send_inbound(wa.webhook, CUSTOMER, "halo")
    await wait_for(lambda: asyncio.sleep(0, wa.fake.attempts >= 1), what="first attempt")
    wa.clock.advance(timedelta(hours=25))
    rows = await wait_for(
        lambda: wa.loket.fetch(select(messages).where(messages.c.direction == "out", messages.c.status == "failed")),
        timeout=15, what="reply failed",
    )
    assert "more than 24 hours ago" in rows[0]["error"] and "Nothing was sent" in rows[0]["error"]
    assert wa.fake.messages == []
    assert not (await wa.loket.fetch(select(identities)))[0]["unreachable"]


async def test_twilio_enforced_window_failure_is_mapped(wa: WhatsAppEnv) -> None:
    """If Twilio's view of the window differs from ours, its 63016 failure callback is shown readably."""
    await wa.fake.send_inbound(wa.webhook, CUSTOMER, "halo")
    wa.fake.last_inbound.clear()  # Twilio has no record of the customer's message
    rows = await wait_for(
        lambda: wa.loket.fetch(select(messages).where(messages.c.direction == "out", messages.c.status == "failed")),
        timeout=15, what="63016 failure via status callback",
    )
    assert "24-hour window" in rows[0]["error"] and "63016" in rows[0]["error"]
    assert wa.fake.messages[0].resource["error_code"] == 63016
