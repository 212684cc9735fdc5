"""WhatsApp via Twilio: inbound through the fake (signed), replies at the fake, signatures, dedup, bad input."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import func, select

from storage.models import identities, inbox_items, messages, touchpoints
from tests.fakes.twilio import twilio_signature
from tests.support import wait_for
from tests.whatsapp.conftest import AUTH_TOKEN, CUSTOMER, SENDER, WhatsAppEnv


async def count(wa: WhatsAppEnv, table: object, *where: object) -> int:
    return int(await wa.loket.scalar(select(func.count()).select_from(table).where(*where)))  # type: ignore[arg-type]


async def test_signature_helper_matches_the_sdk_validator() -> None:
    from twilio.request_validator import RequestValidator

    params = [("Body", "halo"), ("From", CUSTOMER), ("MessageSid", "SM" + "1" * 32)]
    url = "https://loket.example.com/webhooks/twilio/whatsapp?x=1"
    sig = twilio_signature(AUTH_TOKEN, url, params)
    assert RequestValidator(AUTH_TOKEN).validate(url, dict(params), sig)
    assert not RequestValidator(AUTH_TOKEN).validate(url, {**dict(params), "Body": "halo!"}, sig)


async def test_message_reaches_router_and_reply_arrives_with_numbered_choices(wa: WhatsAppEnv) -> None:
    status, ctype, body = await wa.fake.send_inbound(wa.webhook, CUSTOMER, "halo, saya mau tanya", profile_name="Budi")
    assert status == 200
    assert ctype.startswith("text/xml")
    assert "<Response/>" in body
    sent = await wait_for(lambda: asyncio.sleep(0, wa.fake.sent_to(CUSTOMER)), what="reply at the fake")
    reply = sent[0]
    assert reply.get("From") == SENDER
    assert reply.get("StatusCallback") == wa.status_url
    assert "Budi" in (reply.body or "")
    assert "1. Bicara dengan petugas" in (reply.body or "") and "2. Menu" in (reply.body or "")
    ident = (await wa.loket.fetch(select(identities)))[0]
    assert (ident["channel"], ident["address"], ident["display_name"]) == ("whatsapp", "+6281234567890", "Budi")
    out = await wait_for(
        lambda: wa.loket.fetch(select(messages).where(messages.c.direction == "out", messages.c.status == "sent")),
        what="reply recorded as sent",
    )
    assert out[0]["channel_message_id"] == reply.sid

    # a typed number picks the choice: "1" → talk to a person
    await wa.fake.send_inbound(wa.webhook, CUSTOMER, "1")
    await wait_for(lambda: asyncio.sleep(0, len(wa.fake.sent_to(CUSTOMER)) >= 2), what="second reply")
    assert "antrean" in (wa.fake.sent_to(CUSTOMER)[1].body or "")


async def test_button_payload_selects_the_choice(wa: WhatsAppEnv) -> None:
    await wa.fake.send_inbound(wa.webhook, CUSTOMER, "halo")
    await wait_for(lambda: asyncio.sleep(0, wa.fake.sent_to(CUSTOMER)), what="greeting")
    await wa.fake.send_inbound(wa.webhook, CUSTOMER, "Bicara dengan petugas", button_payload="agent",
                               button_text="Bicara dengan petugas")
    await wait_for(lambda: asyncio.sleep(0, len(wa.fake.sent_to(CUSTOMER)) >= 2), what="handover reply")
    assert "antrean" in (wa.fake.sent_to(CUSTOMER)[1].body or "")
    rows = await wa.loket.fetch(select(messages.c.meta).where(messages.c.direction == "in").order_by(messages.c.id))
    assert rows[1]["meta"]["button_payload"] == "agent"


async def test_quick_reply_content_when_configured(wa_factory: object) -> None:
    quick = "HX" + "b2" * 16
    wa = await wa_factory(TWILIO_TEMPLATES=json.dumps({"quick_reply_2": quick}))  # type: ignore[operator]
    await wa.fake.send_inbound(wa.webhook, CUSTOMER, "halo")
    sent = await wait_for(lambda: asyncio.sleep(0, wa.fake.sent_to(CUSTOMER)), what="quick reply")
    assert sent[0].content_sid == quick
    variables = json.loads(sent[0].get("ContentVariables") or "{}")
    assert variables["2"] == "Bicara dengan petugas" and variables["3"] == "agent"
    assert variables["5"] == "menu"
    assert sent[0].body is None


async def test_forged_or_missing_signature_is_refused_and_nothing_stored(wa: WhatsAppEnv) -> None:
    params = wa.fake.inbound_params(CUSTOMER, "halo")
    forged = twilio_signature("not-the-token", wa.webhook, params)
    assert (await wa.fake.post_signed(wa.webhook, params, signature=forged))[0] == 403
    assert (await wa.fake.post_signed(wa.webhook, params, sign=False))[0] == 403
    # signed for another URL (a replay to a different host/path) fails too
    other = twilio_signature(AUTH_TOKEN, "http://evil.example/webhooks/twilio/whatsapp", params)
    assert (await wa.fake.post_signed(wa.webhook, params, signature=other))[0] == 403
    # a tampered body with the original signature
    good = twilio_signature(AUTH_TOKEN, wa.webhook, params)
    tampered = [(k, "transfer uang" if k == "Body" else v) for k, v in params]
    assert (await wa.fake.post_signed(wa.webhook, tampered, signature=good))[0] == 403
    status_params = [("MessageSid", "SM" + "2" * 32), ("MessageStatus", "delivered")]
    assert (await wa.fake.post_signed(wa.status_url, status_params, signature=forged))[0] == 403
    assert (await wa.fake.post_signed(wa.status_url, status_params, sign=False))[0] == 403
    await asyncio.sleep(0.2)
    assert await count(wa, inbox_items) == 0
    assert await count(wa, messages) == 0
    assert await count(wa, touchpoints) == 0
    assert wa.fake.messages == []


async def test_signature_can_be_switched_off_explicitly(wa_factory: object) -> None:
    wa = await wa_factory(LOKET_INSECURE_SKIP_SIGNATURES="true")  # type: ignore[operator]
    status, _, _ = await wa.fake.send_inbound(wa.webhook, CUSTOMER, "halo", sign=False)
    assert status == 200
    assert await count(wa, inbox_items) == 1


async def test_same_message_sid_three_times_is_one_message_and_one_reply(wa: WhatsAppEnv) -> None:
    params = wa.fake.inbound_params(CUSTOMER, "jam buka klinik?", message_sid="SM" + "ab" * 16)
    first = await wa.fake.post_signed(wa.webhook, params)
    rest = await asyncio.gather(wa.fake.post_signed(wa.webhook, params), wa.fake.post_signed(wa.webhook, params))
    assert [r[0] for r in (first, *rest)] == [200, 200, 200]
    await wait_for(lambda: asyncio.sleep(0, wa.fake.sent_to(CUSTOMER)), what="reply")
    await asyncio.sleep(0.5)
    assert len(wa.fake.messages) == 1
    assert await count(wa, messages, messages.c.direction == "in") == 1
    assert await count(wa, inbox_items) == 1


async def test_malformed_bodies_are_400_with_a_reason(wa: WhatsAppEnv) -> None:
    cases = [
        ([("From", CUSTOMER), ("Body", "halo")], "MessageSid"),
        ([("MessageSid", "SM" + "3" * 32), ("Body", "halo")], "From"),
        ([("MessageSid", "SM" + "3" * 32), ("From", "+6281234567890"), ("Body", "x")], "WhatsApp address"),
        ([("MessageSid", "SM" + "3" * 32), ("From", "whatsapp:0812"), ("Body", "x")], "WhatsApp address"),
        ([("MessageSid", "not a sid!"), ("From", CUSTOMER), ("Body", "x")], "SID"),
        ([("MessageSid", "SM" + "3" * 32), ("From", CUSTOMER), ("NumMedia", "lots")], "NumMedia"),
        ([("MessageSid", "SM" + "3" * 32), ("From", CUSTOMER), ("NumMedia", "99")], "NumMedia"),
    ]
    for params, reason in cases:
        status, _, text = await wa.fake.post_signed(wa.webhook, params)
        assert status == 400, (params, status, text)
        assert reason in text
    status, _, text = await wa.fake.post_signed(wa.status_url, [("MessageSid", "SM" + "3" * 32)])
    assert status == 400 and "MessageStatus" in text
    status, _, text = await wa.fake.post_signed(wa.status_url, [("MessageSid", "SM" + "3" * 32),
                                                               ("MessageStatus", "exploded")])
    assert status == 400 and "unknown MessageStatus" in text
    # a JSON body, correctly signed over no form parameters, is still not a Twilio form post
    import aiohttp

    async with aiohttp.ClientSession() as s:
        sig = twilio_signature(AUTH_TOKEN, wa.webhook, [])
        async with s.post(wa.webhook, json={"MessageSid": "x"}, headers={"X-Twilio-Signature": sig}) as r:
            assert r.status == 400
    assert await count(wa, inbox_items) == 0


async def test_media_is_downloaded_with_account_auth_and_stored(wa: WhatsAppEnv) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2048
    url = wa.fake.add_media(png, "image/png")
    status, _, _ = await wa.fake.send_inbound(wa.webhook, CUSTOMER, "foto resep", media=[(url, "image/png")])
    assert status == 200
    assert len(wa.fake.media_fetches) == 1
    rows = await wait_for(lambda: wa.loket.fetch(select(messages).where(messages.c.direction == "in")),
                          what="inbound message")
    att = rows[0]["attachments"]
    assert len(att) == 1 and att[0]["content_type"] == "image/png" and att[0]["size"] == len(png)
    import hashlib

    assert att[0]["sha256"] == hashlib.sha256(png).hexdigest()
    store = wa.loket.rt.services["whatsapp"].store
    assert store.read(att[0]["sha256"]) == png


async def test_a_redelivered_media_message_is_stored_once_and_fetched_once(wa: WhatsAppEnv) -> None:
    """Twilio retries a webhook it got no answer to: the second delivery is acknowledged without downloading the
    media again or storing a second message."""
    url = wa.fake.add_media(b"\x89PNG\r\n\x1a\n" + b"\x01" * 512, "image/png")
    params = wa.fake.inbound_params(CUSTOMER, "foto", media=[(url, "image/png")])
    first = await wa.fake.post_signed(wa.webhook, params)
    second = await wa.fake.post_signed(wa.webhook, params)
    assert first[0] == second[0] == 200
    assert len(wa.fake.media_fetches) == 1
    assert await count(wa, inbox_items) == 1
    rows = await wait_for(lambda: wa.loket.fetch(select(messages).where(messages.c.direction == "in")),
                          what="inbound message")
    assert len(rows) == 1 and len(rows[0]["attachments"]) == 1


async def test_unsupported_or_oversized_media_is_graceful(wa: WhatsAppEnv) -> None:
    exe = wa.fake.add_media(b"MZ" + b"\x00" * 100, "application/x-msdownload")
    status, _, _ = await wa.fake.send_inbound(wa.webhook, CUSTOMER, "", media=[(exe, "application/x-msdownload")])
    assert status == 200
    assert wa.fake.media_fetches == []  # refused by type before downloading
    sent = await wait_for(lambda: asyncio.sleep(0, wa.fake.sent_to(CUSTOMER)), what="unsupported answer")
    assert sent[0].body
    kinds = [r["kind"] for r in await wa.loket.fetch(select(touchpoints.c.kind))]
    assert "unsupported_content" in kinds
    store = wa.loket.rt.services["whatsapp"].store
    store.max_bytes = 1000
    big = wa.fake.add_media(b"x" * 5000, "image/jpeg")
    status, _, _ = await wa.fake.send_inbound(wa.webhook, CUSTOMER, "", media=[(big, "image/jpeg")])
    assert status == 200
    async def unsupported() -> list[dict[str, object]] | None:
        rows = await wa.loket.fetch(select(messages.c.meta).where(messages.c.direction == "in",
                                                                  messages.c.purpose == "unsupported"))
        return rows if len(rows) == 2 else None

    rows = await wait_for(unsupported, what="two unsupported messages")
    assert "unsupported type" in str(rows[0]["meta"]["unsupported"])
    assert "limit" in str(rows[1]["meta"]["unsupported"])
    assert await count(wa, inbox_items) == 2


async def test_signature_uses_the_public_url_behind_a_proxy(wa_factory: object) -> None:
    public = "https://desk.example.com/loket"
    wa = await wa_factory(LOKET_PUBLIC_URL=public)  # type: ignore[operator]
    params = wa.fake.inbound_params(CUSTOMER, "halo dari balik proxy")
    # Twilio called the public URL; the proxy forwarded it to us (prefix stripped)
    as_twilio_signed = twilio_signature(AUTH_TOKEN, public + "/webhooks/twilio/whatsapp", params)
    local_signed = twilio_signature(AUTH_TOKEN, wa.webhook, params)
    assert (await wa.fake.post_signed(wa.webhook, params, signature=local_signed))[0] == 403
    assert (await wa.fake.post_signed(wa.webhook, params, signature=as_twilio_signed))[0] == 200
    assert await count(wa, inbox_items) == 1
    channel = wa.loket.rt.services["whatsapp"]
    assert channel.status_callback == public + "/webhooks/twilio/status"


async def test_slow_media_does_not_hold_the_webhook(wa: WhatsAppEnv) -> None:
    import time

    channel = wa.loket.rt.services["whatsapp"]
    channel.media_budget = 0.5
    wa.fake.media_delay = 1.5
    url = wa.fake.add_media(b"%PDF-1.4 ...", "application/pdf")
    started = time.monotonic()
    status, _, _ = await wa.fake.send_inbound(wa.webhook, CUSTOMER, "ini dokumennya", media=[(url, "application/pdf")])
    assert status == 200
    assert time.monotonic() - started < 1.4
    rows = await wait_for(lambda: wa.loket.fetch(select(messages).where(messages.c.direction == "in")),
                          what="inbound message")
    att = rows[0]["attachments"]
    # kept as a reference (not downloaded) so the agent still sees that a file was sent
    assert att[0]["url"] == url and att[0]["sha256"] is None and att[0]["content_type"] == "application/pdf"
    assert rows[0]["body"] == "ini dokumennya"


async def test_location_message_is_readable(wa: WhatsAppEnv) -> None:
    await wa.fake.send_inbound(wa.webhook, CUSTOMER, "", extra={"Latitude": "-6.2", "Longitude": "106.8",
                                                                "Label": "Klinik Sehat"})
    rows = await wait_for(lambda: wa.loket.fetch(select(messages).where(messages.c.direction == "in")),
                          what="inbound location")
    assert rows[0]["body"] == "📍 Klinik Sehat (-6.2, 106.8)"
    assert rows[0]["meta"]["location"]["latitude"] == "-6.2"


def test_bad_template_sid_is_a_config_error(settings_factory: object) -> None:
    import pytest

    from bot.config import ConfigError
    from bot.runtime import Runtime

    settings = settings_factory(  # type: ignore[operator]
        TWILIO_ACCOUNT_SID="AC" + "0" * 32, TWILIO_AUTH_TOKEN="x" * 32, TWILIO_WHATSAPP_FROM="+14155238886",
        TWILIO_TEMPLATES=json.dumps({"csat": "my-template"}),
    )
    with pytest.raises(ConfigError, match="csat"):
        Runtime(settings, components=["bot.channels.whatsapp"])
