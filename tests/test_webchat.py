"""Web chat: replies, history, idempotent resend, ordering, bad frames (issue: conversation core)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
from sqlalchemy import func, select

from storage.models import inbox_items, messages, touchpoints
from tests.support import LoketServer, WebChatClient, wait_for


async def test_message_gets_greeting_with_choices(loket: LoketServer) -> None:
    async with WebChatClient(loket.base_url) as chat:
        reply = await chat.say("halo saya mau tanya")
        assert reply["author"] == "bot"
        assert "Selamat datang" in reply["text"]
        assert {c["value"] for c in reply["choices"]} == {"agent", "menu"}
        ack = [f for f in chat.frames if f["type"] == "ack"]
        assert len(ack) == 1


async def test_english_detection_and_history_on_reconnect(loket: LoketServer) -> None:
    async with WebChatClient(loket.base_url) as chat:
        reply = await chat.say("hello, I need help with my order please")
        assert "Welcome" in reply["text"]
        token = chat.visitor
    async with WebChatClient(loket.base_url, visitor=token) as again:
        texts = [m["text"] for m in again.history]
        assert texts[0] == "hello, I need help with my order please"
        assert "Welcome" in texts[1]
        assert again.history[0]["author"] == "customer"


async def test_same_client_id_twice_is_stored_and_answered_once(loket: LoketServer) -> None:
    async with WebChatClient(loket.base_url) as chat:
        cid = uuid.uuid4().hex
        await chat.send_text("pesanan saya belum sampai", client_id=cid)
        await chat.send_text("pesanan saya belum sampai", client_id=cid)
        await chat.wait_replies(1)
        acks = await wait_for(
            lambda: asyncio.sleep(0, [f for f in chat.frames if f["type"] == "ack" and f["client_id"] == cid])
            if len([f for f in chat.frames if f["type"] == "ack"]) >= 2 else asyncio.sleep(0, None),
            what="two acks",
        )
        assert len(acks) == 2
        await asyncio.sleep(0.5)
        assert len(chat.replies()) == 1
    n_in = await loket.scalar(select(func.count()).select_from(messages).where(messages.c.direction == "in"))
    n_items = await loket.scalar(select(func.count()).select_from(inbox_items))
    assert (n_in, n_items) == (1, 1)


async def test_resend_after_reconnect_is_not_processed_twice(loket: LoketServer) -> None:
    async with WebChatClient(loket.base_url) as chat:
        cid = uuid.uuid4().hex
        await chat.send_text("jam buka klinik?", client_id=cid)
        await chat.wait_replies(1)
        token = chat.visitor
    async with WebChatClient(loket.base_url, visitor=token) as again:
        await again.send_text("jam buka klinik?", client_id=cid)
        await again.wait_frame(lambda f: f["type"] == "ack" and f["client_id"] == cid)
        await asyncio.sleep(0.5)
        assert again.replies() == []
    assert await loket.scalar(select(func.count()).select_from(messages).where(messages.c.direction == "in")) == 1


async def test_hundred_concurrent_messages_answered_in_order(loket: LoketServer) -> None:
    async with WebChatClient(loket.base_url) as chat:
        await chat.say("mulai")  # greeting first, so every later message gets the "noted" answer
        texts = [f"pesan nomor {i}" for i in range(100)]
        await asyncio.gather(*(chat.send_text(t) for t in texts))
        await chat.wait_replies(101, timeout=60)
    rows = await loket.fetch(select(messages.c.id, messages.c.direction, messages.c.body).order_by(messages.c.id))
    inbound = [r for r in rows if r["direction"] == "in"][1:]
    # the order they were persisted (the arrival order) is the order they were routed and answered
    assert len(inbound) == 100
    assert sorted(r["body"] for r in inbound) == sorted(texts)
    # each inbound message is immediately followed by its own reply: answered one at a time, in order
    seq = [r["direction"] for r in rows]
    assert seq == ["in", "out"] * 101
    items = await loket.fetch(select(inbox_items.c.id, inbox_items.c.payload).order_by(inbox_items.c.id))
    assert [i["payload"]["text"] for i in items][1:] == [r["body"] for r in inbound]


async def test_choice_by_button_and_by_number(loket: LoketServer) -> None:
    async with WebChatClient(loket.base_url) as chat:
        first = await chat.say("halo")
        assert first["choices"][0]["value"] == "agent"
        n = len(chat.replies())
        await chat.choose("agent", "Bicara dengan petugas")
        reply = (await chat.wait_replies(n + 1))[n]
        assert "petugas" in reply["text"]
    async with WebChatClient(loket.base_url) as chat2:
        await chat2.say("halo")
        reply = await chat2.say("1")
        assert "antrean" in reply["text"]


async def test_timeline_lists_every_message_and_state_change(loket: LoketServer) -> None:
    async with WebChatClient(loket.base_url) as chat:
        await chat.say("halo")
        await chat.say("0")
        await chat.send_text("masih menunggu")
        await asyncio.sleep(0.3)
    rows = await loket.fetch(select(touchpoints.c.kind, touchpoints.c.payload).order_by(touchpoints.c.id))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("message_in") == 3
    assert kinds.count("message_out") == 2
    assert kinds.count("delivery") == 2
    changes = [r["payload"] for r in rows if r["kind"] == "state_changed"]
    assert changes == [{"from": "bot", "to": "queued", "reason": "customer_asked", "team": None}]
    assert kinds[0] == "customer_created" and "conversation_opened" in kinds and "escalated" in kinds


async def test_stop_opts_out_and_start_opts_back_in(loket: LoketServer) -> None:
    async with WebChatClient(loket.base_url, lang="en") as chat:
        await chat.say("hello")
        reply = await chat.say("STOP")
        assert "not receive" in reply["text"]
        back = await chat.say("start")
        assert "Welcome back" in back["text"]
    kinds = [r["kind"] for r in await loket.fetch(select(touchpoints.c.kind))]
    assert "opted_out" in kinds and "opted_in" in kinds


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("{not json", "invalid_json"),
    ("[1,2,3]", "invalid_frame"),
    ('{"type":"shout","text":"x"}', "unknown_type"),
    ('{"type":"message","client_id":"abcdefgh12","text":"hi","extra":1}', "unknown_fields"),
    ('{"type":"message","client_id":"abcdefgh12","text":"   "}', "empty"),
    ('{"type":"message","client_id":"abcdefgh12","text":""}', "empty"),
    ('{"type":"message","client_id":"x","text":"hi"}', "invalid_client_id"),
    ('{"type":"message","client_id":"abcdefgh12","text":5}', "invalid_text"),
    ('{"type":"message","client_id":"abcdefgh12","text":"' + "a" * 5000 + '"}', "too_long"),
    (b'{"type":"message","client_id":"abcdefgh12","text":"\xff\xfe"}', "invalid_utf8"),
]


async def test_bad_frames_get_clear_errors_and_store_nothing(loket: LoketServer) -> None:
    async with WebChatClient(loket.base_url) as bad, WebChatClient(loket.base_url) as good:
        for raw, code in BAD_FRAMES:
            n = len(bad.frames)
            await bad.send_raw(raw)
            frame = await bad.wait_frame(lambda f: f["type"] == "error", start=n)
            assert frame["code"] == code, (raw[:60], frame)
            assert frame["message"]
        # the server keeps serving: the same socket and another visitor still work
        reply = await good.say("halo")
        assert reply["author"] == "bot"
        reply2 = await bad.say("halo juga")
        assert reply2["author"] == "bot"
    assert await loket.scalar(select(func.count()).select_from(inbox_items)) == 2


async def test_invalid_utf8_text_frame_closes_only_that_socket(loket: LoketServer) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(loket.base_url + "/webchat/ws")
        await ws.receive_json()
        await ws.receive_json()
        # a TEXT frame whose payload is not UTF-8: aiohttp's client will not build one, so write it raw
        writer = ws._writer  # noqa: SLF001
        await writer.send_frame(b'{"type":"message","client_id":"abcdefgh12","text":"\xc3\x28"}', 0x1)
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert ws.close_code == 1007  # "invalid frame payload data", the WebSocket protocol's clear error
    async with WebChatClient(loket.base_url) as good:
        assert (await good.say("halo"))["author"] == "bot"
    assert await loket.scalar(select(func.count()).select_from(inbox_items)) == 1


async def test_widget_and_demo_page_are_served(loket: LoketServer) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(loket.base_url + "/widget.js") as r:
            assert r.status == 200 and "javascript" in r.headers["Content-Type"]
            assert "/webchat/ws" in await r.text()
        async with s.get(loket.base_url + "/") as r:
            assert r.status == 200 and '<script src="/widget.js"' in await r.text()
        async with s.get(loket.base_url + "/healthz") as r:
            assert (await r.json())["status"] == "ok"
        async with s.get(loket.base_url + "/readyz") as r:
            assert (await r.json())["status"] == "ready"
