"""Outgoing webhooks: durable enqueue with the effects, HMAC signature, retries with backoff, delivery log."""

from __future__ import annotations

import json
import time

import aiohttp
from sqlalchemy import select

from bot.api.models import webhook_deliveries
from bot.webhooks_out import sign, verify
from tests.production.helpers import Receiver, bearer, seed_conversation, token
from tests.support import LoketServer, WebChatClient, wait_for


async def _subscribe(loket: LoketServer, tok: str, url: str, events: list[str]) -> dict:  # type: ignore[type-arg]
    async with aiohttp.ClientSession(headers=bearer(tok)) as s, s.post(
            f"{loket.base_url}/api/v1/webhooks", json={"url": url, "events": events,
                                                       "secret": "s3cret-s3cret-s3cret"}) as r:
        assert r.status == 201, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def test_message_and_status_events_are_signed_and_delivered(settings_factory) -> None:  # type: ignore[no-untyped-def]
    server = LoketServer(settings_factory(LOKET_WEBHOOK_BACKOFF_BASE="0.05", LOKET_WEBHOOK_POLL="0.05"))
    await server.start()
    try:
        tok = await token(server, "webhooks:read", "webhooks:write", "conversations:write")
        async with Receiver() as rx:
            sub = await _subscribe(server, tok, rx.url, ["message.created", "conversation.status_changed"])
            assert sub["secret"] == "s3cret-s3cret-s3cret"
            async with WebChatClient(server.base_url) as chat:
                await chat.say("halo")
            reqs = await rx.wait(2)
            for req in reqs:
                h = req["headers"]
                assert h["X-Loket-Signature"] == sign("s3cret-s3cret-s3cret", h["X-Loket-Timestamp"], req["body"])
                assert verify("s3cret-s3cret-s3cret", h["X-Loket-Timestamp"], req["body"], h["X-Loket-Signature"])
                assert not verify("wrong-secret-wrong", h["X-Loket-Timestamp"], req["body"], h["X-Loket-Signature"])
                assert not verify("s3cret-s3cret-s3cret", h["X-Loket-Timestamp"], req["body"] + b" ",
                                  h["X-Loket-Signature"])
            bodies = sorted((json.loads(r["body"]) for r in reqs), key=lambda b: b["data"]["message_id"])
            assert [(b["event"], b["data"]["direction"]) for b in bodies[:2]] == [
                ("message.created", "in"), ("message.created", "out")]
            assert bodies[0]["data"]["text"] == "halo"
            conv_id = bodies[0]["data"]["conversation_id"]
            async with aiohttp.ClientSession(headers=bearer(tok)) as s, s.patch(
                    f"{server.base_url}/api/v1/conversations/{conv_id}", json={"state": "resolved"}) as r:
                assert r.status == 200
            reqs = await rx.wait(3)
            last = json.loads(reqs[2]["body"])
            assert last["event"] == "conversation.status_changed"
            assert (last["data"]["from"], last["data"]["to"]) == ("bot", "resolved")
            assert reqs[2]["headers"]["X-Loket-Event"] == "conversation.status_changed"
    finally:
        await server.stop()


async def test_failures_are_retried_with_backoff_and_logged(settings_factory) -> None:  # type: ignore[no-untyped-def]
    server = LoketServer(settings_factory(LOKET_WEBHOOK_BACKOFF_BASE="0.2", LOKET_WEBHOOK_POLL="0.05"))
    await server.start()
    try:
        tok = await token(server, "webhooks:read", "webhooks:write", "messages:write")
        c = await seed_conversation(server)
        async with Receiver(script=[500, 429, 503]) as rx:
            sub = await _subscribe(server, tok, rx.url, ["message.created"])
            async with aiohttp.ClientSession(headers=bearer(tok)) as s:
                async with s.post(f"{server.base_url}/api/v1/conversations/{c['conversation_id']}/messages",
                                  json={"text": "hai", "author": "bot"}) as r:
                    assert r.status == 201
                started = time.monotonic()
                reqs = await rx.wait(4, timeout=15)
                took = time.monotonic() - started
                # the same delivery each time: one id, one body
                assert len({r["headers"]["X-Loket-Delivery"] for r in reqs}) == 1
                assert len({r["body"] for r in reqs}) == 1
                assert took >= 0.2  # three backoffs, each at least base/2

                async def delivered() -> list:  # type: ignore[type-arg]
                    async with s.get(f"{server.base_url}/api/v1/webhooks/{sub['id']}/deliveries") as r:
                        data = (await r.json())["data"]
                    return data if data and data[0]["status"] == "delivered" else []

                rows = await wait_for(delivered, what="delivered status")
                d = rows[0]
                assert d["attempts"] == 4
                assert [e["status_code"] for e in d["log"]] == [500, 429, 503, 200]
                assert d["log"][0]["error"] == "HTTP 500"
                assert d["last_status_code"] == 200 and d["last_error"] is None
                # redeliver on demand
                async with s.post(f"{server.base_url}/api/v1/webhooks/{sub['id']}/deliveries/{d['id']}/retry") as r:
                    assert r.status == 202
                await rx.wait(5)
    finally:
        await server.stop()


async def test_gives_up_after_max_attempts_and_unreachable_url(settings_factory) -> None:  # type: ignore[no-untyped-def]
    server = LoketServer(settings_factory(LOKET_WEBHOOK_BACKOFF_BASE="0.02", LOKET_WEBHOOK_BACKOFF_CAP="0.05",
                                          LOKET_WEBHOOK_MAX_ATTEMPTS="3", LOKET_WEBHOOK_POLL="0.05",
                                          LOKET_WEBHOOK_TIMEOUT="2"))
    await server.start()
    try:
        tok = await token(server, "webhooks:write", "messages:write")
        c = await seed_conversation(server)
        from tests.processes import free_port

        await _subscribe(server, tok, f"http://127.0.0.1:{free_port()}/nobody", ["message.created"])
        async with aiohttp.ClientSession(headers=bearer(tok)) as s, s.post(
                f"{server.base_url}/api/v1/conversations/{c['conversation_id']}/messages",
                json={"text": "hai", "author": "bot"}) as r:
            assert r.status == 201

        async def failed() -> list:  # type: ignore[type-arg]
            rows = await server.fetch(select(webhook_deliveries))
            return rows if rows and rows[0]["status"] == "failed" else []

        rows = await wait_for(failed, timeout=15, what="failed delivery")
        assert rows[0]["attempts"] == 3
        assert "ClientConnectorError" in rows[0]["last_error"] or "Connect" in rows[0]["last_error"]
    finally:
        await server.stop()


async def test_delivery_is_enqueued_in_the_effects_transaction(loket: LoketServer) -> None:
    """A rolled-back transaction leaves no delivery; a committed one always has it (no worker needed)."""
    from bot.effects import Send
    from bot.messages import Reply
    from bot.outbound import act_on_conversation

    tok = await token(loket, "webhooks:write")
    await _subscribe(loket, tok, "http://127.0.0.1:9/never", ["message.created"])
    loket.rt.services["webhooks"]._stopping = True  # keep rows pending: we only look at the enqueue
    loket.rt.services["webhooks"].nudge()
    c = await seed_conversation(loket)

    async def boom(actx, eff):  # type: ignore[no-untyped-def]
        raise RuntimeError("effect failed after the send was written")

    loket.rt.pipeline.appliers["test.boom"] = boom
    from bot.effects import Custom

    try:
        await act_on_conversation(loket.rt, c["conversation_id"], [Send(Reply("x")), Custom("test.boom")])
    except RuntimeError:
        pass
    assert await loket.fetch(select(webhook_deliveries)) == []
    await act_on_conversation(loket.rt, c["conversation_id"], [Send(Reply("y"))])
    rows = await loket.fetch(select(webhook_deliveries))
    assert [r["payload"]["data"]["text"] for r in rows] == ["y"]
