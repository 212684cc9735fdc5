"""Sending to Telegram: 429 retry_after, 5xx bursts, blocked users, rate limits, long texts, files."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from sqlalchemy import select

from bot.channels.telegram import RateLimiter, TelegramChannel, callback_data_for, split_text
from bot.messages import Choice, OutboundMessage, Reply
from storage.models import identities, messages, outbox_items
from tests.fakes.telegram import FakeTelegram
from tests.support import LoketServer, wait_for

from .conftest import settle, wait_rows, wait_sent


async def test_429_retry_after_is_honoured_and_the_reply_sent_once(fake: FakeTelegram,
                                                                   loket_tg: LoketServer) -> None:
    fake.add_chat(6001)
    fake.fail_next(1, status=429, retry_after=1)
    await fake.post_update(fake.user_message(6001, "halo"))
    [reply] = await wait_sent(fake, 6001, timeout=15)
    attempts = [at for m, p, at in fake.calls if m == "sendmessage"]
    assert len(attempts) == 2
    assert reply.at - attempts[0] >= 1.0, "the retry came before Telegram's retry_after"
    await settle(0.5)
    assert len(fake.sent_to(6001)) == 1
    [out] = await wait_rows(loket_tg, select(messages).where(messages.c.direction == "out",
                                                             messages.c.status == "sent"))
    [row] = await loket_tg.fetch(select(outbox_items))
    assert row["attempts"] == 2


async def test_burst_of_5xx_is_delivered_after_recovery(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    fake.add_chat(6002)
    fake.fail_next(3, status=502)
    await fake.post_update(fake.user_message(6002, "halo"))
    await wait_sent(fake, 6002, timeout=15)
    await settle(0.3)
    assert len(fake.sent_to(6002)) == 1
    assert len(fake.calls_of("sendMessage")) == 4
    [out] = await wait_rows(loket_tg, select(messages).where(messages.c.direction == "out",
                                                             messages.c.status == "sent"))
    assert out["error"] is None


async def test_blocked_user_fails_the_message_and_marks_the_identity_unreachable(
    fake: FakeTelegram, loket_tg: LoketServer
) -> None:
    fake.add_chat(6003)
    fake.block(6003)
    await fake.post_update(fake.user_message(6003, "halo"))

    async def failed() -> list[dict[str, object]]:
        return await loket_tg.fetch(select(messages).where(messages.c.direction == "out",
                                                           messages.c.status == "failed"))

    [out] = await wait_for(failed, what="the reply to fail")
    assert "Forbidden: bot was blocked by the user" in str(out["error"])
    [ident] = await loket_tg.fetch(select(identities).where(identities.c.address == "6003"))
    assert ident["unreachable"] is True
    assert "blocked" in ident["unreachable_reason"]
    assert len(fake.calls_of("sendMessage")) == 1  # permanent: not retried
    assert fake.sent == []


async def test_unknown_chat_is_a_readable_permanent_failure(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    channel: TelegramChannel = loket_tg.rt.services["telegram"]
    out = OutboundMessage(message_id=1, conversation_id=1, customer_id=1, channel="telegram", address="999",
                          reply=Reply("halo"))
    try:
        await channel.send(out)
    except Exception as exc:  # noqa: BLE001
        assert type(exc).__name__ == "PermanentSendError"
        assert "Bad Request: chat not found" in str(exc)
        assert exc.unreachable is True  # type: ignore[attr-defined]
    else:
        raise AssertionError("sending to an unknown chat must fail")


async def test_per_chat_limit_spaces_messages_to_one_chat(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    fake.add_chat(6004)
    fake.add_chat(6005)
    channel: TelegramChannel = loket_tg.rt.services["telegram"]
    start = time.monotonic()

    def out(chat: int, text: str) -> OutboundMessage:
        return OutboundMessage(message_id=1, conversation_id=1, customer_id=1, channel="telegram",
                               address=str(chat), reply=Reply(text))

    await asyncio.gather(channel.send(out(6004, "satu")), channel.send(out(6004, "dua")),
                         channel.send(out(6005, "lain")))
    one_chat = sorted(m.at for m in fake.sent_to(6004))
    assert one_chat[1] - one_chat[0] >= 0.95
    assert fake.sent_to(6005)[0].at - start < 0.9  # another chat is not held up


async def test_rate_limiter_bot_wide_cap_local_and_shared() -> None:
    local = RateLimiter(per_second=5, chat_interval=0.0)
    start = time.monotonic()
    seen: list[float] = []
    for i in range(11):  # 11 sends at 5 per one-second window need three windows: over a second
        await local.acquire(f"c{i}")
        seen.append(time.monotonic())
    assert time.monotonic() - start >= 0.99
    per_window: dict[int, int] = {}
    for ts in seen:
        per_window[int(ts)] = per_window.get(int(ts), 0) + 1
    assert max(per_window.values()) <= 5
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a = RateLimiter(per_second=30, chat_interval=0.3, redis_url=redis_url, prefix=prefix)
    b = RateLimiter(per_second=30, chat_interval=0.3, redis_url=redis_url, prefix=prefix)
    try:
        stamps: list[float] = []

        async def take(lim: RateLimiter) -> None:
            await lim.acquire("shared-chat")
            stamps.append(time.monotonic())

        await asyncio.gather(take(a), take(b), take(a), take(b))
        stamps.sort()
        gaps = [y - x for x, y in zip(stamps, stamps[1:], strict=False)]
        assert min(gaps) >= 0.25, gaps  # two "workers" share one per-chat budget through Redis
    finally:
        await a.close()
        await b.close()


async def test_rendering_long_text_long_choice_values_and_files(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    fake.add_chat(6006)
    channel: TelegramChannel = loket_tg.rt.services["telegram"]
    long_value = "reschedule:" + "x" * 80
    assert callback_data_for(long_value, 2) == "#2"
    assert callback_data_for("agent", 1) == "agent"
    words = " ".join(f"kata{i}" for i in range(1500))
    parts = split_text(words)
    assert len(parts) == -(-len(words) // 4096) and all(len(p) <= 4096 for p in parts)
    assert " ".join(parts).split() == words.split()  # split between words, nothing lost
    reply = Reply("a" * 5000, choices=(Choice("Konfirmasi", "confirm"), Choice("Jadwal ulang", long_value)))
    out = OutboundMessage(message_id=1, conversation_id=1, customer_id=1, channel="telegram", address="6006",
                          reply=reply)
    await channel.send(out)
    first, second = fake.sent_to(6006)
    assert (len(first.text or ""), first.reply_markup) == (4096, None)
    assert [b["callback_data"] for b in second.buttons] == ["confirm", "#2"]
    tricky = "Ketik *menu* untuk pilihan; <b>bukan tag</b> & 5 < 6 *tanpa pasangan"
    await channel.send(OutboundMessage(message_id=4, conversation_id=1, customer_id=1, channel="telegram",
                                       address="6006", reply=Reply(tricky)))
    marked = fake.sent_to(6006)[-1]
    assert marked.params["parse_mode"] == "HTML"
    assert "<b>menu</b>" in marked.params["text"]  # *bold* as WhatsApp writes it, rendered bold
    assert marked.text == tricky.replace("*menu*", "menu")  # everything else arrives literally
    photo = channel.store.save(b"\x89PNG fake image bytes", "denah.png", "image/png")
    pdf = channel.store.save(b"%PDF-1.4 fake", "jadwal.pdf", "application/pdf")
    await channel.send(OutboundMessage(message_id=2, conversation_id=1, customer_id=1, channel="telegram",
                                       address="6006", reply=Reply("Denah klinik", attachments=(photo,))))
    await channel.send(OutboundMessage(message_id=3, conversation_id=1, customer_id=1, channel="telegram",
                                       address="6006", reply=Reply("Jadwal", attachments=(pdf,))))
    sent = fake.sent_to(6006)
    assert [(m.method, m.caption, m.file_bytes) for m in sent[3:]] == [
        ("sendphoto", "Denah klinik", b"\x89PNG fake image bytes"),
        ("senddocument", "Jadwal", b"%PDF-1.4 fake"),
    ]
    assert sent[4].file_name == "jadwal.pdf"
