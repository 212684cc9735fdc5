"""Reminders and answers on WhatsApp (fake Twilio) and Telegram (fake Bot API): the template with Indonesian
date variables, Telegram buttons, fallback to the next channel after a failed delivery, and confirm /
reschedule / cancel by digit, word and button on both channels."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.clock import FrozenClock
from tests.appointments.helpers import T0, advance, appointment, import_rows, reminders, row, wait_reminder
from tests.conftest import free_port
from tests.fakes.telegram import FakeTelegram
from tests.fakes.twilio import FakeTwilio
from tests.support import LoketServer, wait_for

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "f" * 8 + "0123456789abcdef0123456789ab"
SENDER = "whatsapp:+14155238886"
TEMPLATE = "HX" + "a1" * 16
TG_TOKEN = "123:ABC"
TG_SECRET = "s3cret"


@dataclass
class Env:
    loket: LoketServer
    twilio: FakeTwilio
    tg: FakeTelegram
    clock: FrozenClock

    @property
    def wa_webhook(self) -> str:
        return self.loket.base_url + "/webhooks/twilio/whatsapp"

    @property
    def status_url(self) -> str:
        return self.loket.base_url + "/webhooks/twilio/status"


@pytest.fixture
async def env(settings_factory: Any) -> AsyncIterator[Env]:
    clock = FrozenClock(T0)
    twilio = FakeTwilio(ACCOUNT_SID, AUTH_TOKEN, clock=clock, senders=[SENDER])
    await twilio.start()
    tg = FakeTelegram(TG_TOKEN)
    await tg.start()
    port = free_port()
    settings = settings_factory(
        TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_WHATSAPP_FROM=SENDER,
        TWILIO_API_BASE=twilio.base_url, TWILIO_TEMPLATES=json.dumps({"appointment_reminder": TEMPLATE}),
        TELEGRAM_BOT_TOKEN=TG_TOKEN, TELEGRAM_WEBHOOK_SECRET=TG_SECRET, TELEGRAM_API_BASE=tg.base_url,
        LOKET_PORT=str(port), LOKET_PUBLIC_URL=f"http://127.0.0.1:{port}",
        LOKET_REMINDER_POLL_SECONDS="0.05", LOKET_REMINDER_RATE="0",
    )
    loket = LoketServer(settings, clock=clock, components=[
        "bot.channels.whatsapp", "bot.channels.telegram", "bot.health", "bot.appointments"])
    await loket.start()
    tg.webhook = {"url": loket.base_url + "/webhooks/telegram", "secret_token": TG_SECRET}
    try:
        yield Env(loket, twilio, tg, clock)
    finally:
        await loket.stop()
        await tg.stop()
        await twilio.stop()


async def _remind(env: Env, tmp_path: Path, rows: list[dict[str, str]]) -> None:
    await import_rows(env.loket, tmp_path, rows)
    await advance(env.loket, env.clock, timedelta(hours=30))
    for r in rows:
        await wait_reminder(env.loket, r["external_id"], "24h", "sent")


async def test_whatsapp_template_then_fallback_to_telegram_buttons(env: Env, tmp_path: Path) -> None:
    env.tg.add_chat(777001)
    await _remind(env, tmp_path, [row("F1", name="Budi", phone="081234567890", telegram_chat_id="777001")])
    to = "whatsapp:+6281234567890"
    sent = await wait_for(lambda: _async(env.twilio.sent_to(to)), what="WhatsApp reminder")
    wa = sent[0]
    assert wa.content_sid == TEMPLATE  # outside the 24-hour window: the approved template
    variables = json.loads(wa.get("ContentVariables") or "{}")
    assert variables == {"1": "Budi", "2": "Rabu, 25 November 2026 10.00 WIB", "3": "Klinik Sehat, Jl. Merdeka 1"}
    # Twilio reports the message undeliverable → the same stage goes out once on Telegram
    await env.twilio.send_status(env.status_url, wa.sid, "undelivered", error_code=63003)
    tg_msgs = await wait_for(lambda: _async(env.tg.sent_to(777001)), what="Telegram fallback")
    assert "pengingat janji temu" in (tg_msgs[0].text or "")
    assert [b.get("callback_data") for b in tg_msgs[0].buttons] == ["confirm", "reschedule", "cancel"]
    rem = (await reminders(env.loket, "F1"))["24h"]
    assert rem["status"] == "sent" and rem["channel"] == "telegram"
    assert [f["channel"] for f in rem["fallback"]] == ["whatsapp"]
    assert "63003" in rem["fallback"][0]["error"]
    await env.loket.rt.services["reminders"].tick()
    assert len(env.tg.sent_to(777001)) == 1 and len(env.twilio.sent_to(to)) == 1
    # the customer presses "Konfirmasi" on Telegram
    status, _ = await env.tg.post_update(env.tg.callback_press(777001, "confirm", tg_msgs[0]))
    assert status == 200
    await wait_for(lambda: _status(env, "F1", "confirmed"), what="confirmed")
    replies = await wait_for(lambda: _async(env.tg.sent_to(777001)[1:]), what="confirmation on Telegram")
    assert "dikonfirmasi" in (replies[0].text or "")


TG_CASES = [("T1", "3", "cancelled"), ("T2", "konfirmasi", "confirmed"), ("T3", "button:reschedule", None)]
WA_CASES = [("W1", "1", "confirmed"), ("W2", "button:cancel", "cancelled"), ("W3", "ganti jadwal", None)]


async def test_answers_on_telegram_and_whatsapp(env: Env, tmp_path: Path) -> None:
    rows = [row(ext, phone=f"08129999000{i}", telegram_chat_id=f"88800{i}", channel="telegram",
                start=f"2026-11-25 {9 + i:02d}:00") for i, (ext, _, _) in enumerate(TG_CASES)]
    rows += [row(ext, phone=f"08127777000{i}", channel="whatsapp", start=f"2026-11-25 {13 + i:02d}:00")
             for i, (ext, _, _) in enumerate(WA_CASES)]
    for i in range(len(TG_CASES)):
        env.tg.add_chat(int(f"88800{i}"))
    await _remind(env, tmp_path, rows)
    for i, (ext, answer, status) in enumerate(TG_CASES):
        chat = int(f"88800{i}")
        reminder = (await wait_for(lambda c=chat: _async(env.tg.sent_to(c)), what=f"reminder {ext}"))[0]
        if answer.startswith("button:"):
            update = env.tg.callback_press(chat, answer[7:], reminder)
        else:
            update = env.tg.user_message(chat, answer)
        assert (await env.tg.post_update(update))[0] == 200
        got = await wait_for(lambda c=chat: _async(env.tg.sent_to(c)[1:]), what=f"answer to {ext}")
        await _check(env, ext, status, got[0].text or "")
    for i, (ext, answer, status) in enumerate(WA_CASES):
        to = f"whatsapp:+628127777000{i}"
        await wait_for(lambda t=to: _async(env.twilio.sent_to(t)), what=f"reminder {ext}")
        if answer.startswith("button:"):
            code, _, _ = await env.twilio.send_inbound(env.wa_webhook, to, answer[7:].title(),
                                                       button_payload=answer[7:])
        else:
            code, _, _ = await env.twilio.send_inbound(env.wa_webhook, to, answer)
        assert code == 200
        got = await wait_for(lambda t=to: _async(env.twilio.sent_to(t)[1:]), what=f"answer to {ext}")
        await _check(env, ext, status, got[0].body or "")


async def _check(env: Env, ext: str, status: str | None, text: str) -> None:
    if status is None:  # reschedule: free slots offered as numbered choices
        assert "pilih jadwal baru" in text, text
        assert (await reminders(env.loket, ext))["24h"]["outcome"] == "reschedule_requested"
        return
    await wait_for(lambda: _status(env, ext, status), what=f"{ext} {status}")
    assert ("dikonfirmasi" if status == "confirmed" else "dibatalkan") in text, text


async def _status(env: Env, ext: str, status: str) -> bool:
    return (await appointment(env.loket, ext))["status"] == status


async def _async(value: Any) -> Any:
    return value
