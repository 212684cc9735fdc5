"""Forged webhook signatures → 403 and nothing stored; the API scope matrix for every route; throttling that a
spoofed X-Forwarded-For cannot dodge; secrets never logged."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import aiohttp
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from bot.api.auth import SCOPES
from bot.api.web import ROUTES
from bot.logs import JsonFormatter
from storage.models import customers, inbox_items, messages
from tests.production.helpers import bearer, token
from tests.security.conftest import TELEGRAM_SECRET, TELEGRAM_TOKEN, TWILIO_SID, TWILIO_TOKEN
from tests.support import LoketServer


async def _nothing_stored(server: LoketServer) -> None:
    for table in (inbox_items, messages, customers):
        assert await server.scalar(select(func.count()).select_from(table)) == 0, table.name


def _update(text: str = "halo") -> dict[str, Any]:
    return {"update_id": 1001, "message": {"message_id": 5, "date": 1700000000, "text": text,
                                           "chat": {"id": 42, "type": "private", "first_name": "Budi"},
                                           "from": {"id": 42, "is_bot": False, "first_name": "Budi"}}}


async def test_forged_signatures_on_every_webhook_are_refused(secure_settings: Any) -> None:
    server = LoketServer(secure_settings())
    await server.start()
    try:
        url = server.base_url
        form = {"AccountSid": TWILIO_SID, "From": "whatsapp:+6281234567890", "To": "whatsapp:+14155238886",
                "Body": "halo", "MessageSid": "SM" + "2" * 32, "NumMedia": "0"}
        status_form = {"AccountSid": TWILIO_SID, "MessageSid": "SM" + "3" * 32, "MessageStatus": "delivered"}
        good = RequestValidator(TWILIO_TOKEN)
        forged = RequestValidator("not-the-auth-token")
        public = "https://loket.example.com"
        async with aiohttp.ClientSession() as s:
            cases = [
                ("telegram no secret", s.post(f"{url}/webhooks/telegram", json=_update())),
                ("telegram wrong secret", s.post(f"{url}/webhooks/telegram", json=_update(),
                                                 headers={"X-Telegram-Bot-Api-Secret-Token": "guess"})),
                ("telegram secret prefix", s.post(f"{url}/webhooks/telegram", json=_update(),
                                                  headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET[:-1]})),
                ("twilio no signature", s.post(f"{url}/webhooks/twilio/whatsapp", data=form)),
                ("twilio forged", s.post(f"{url}/webhooks/twilio/whatsapp", data=form, headers={
                    "X-Twilio-Signature": forged.compute_signature(f"{public}/webhooks/twilio/whatsapp", form)})),
                ("twilio signed for another url", s.post(f"{url}/webhooks/twilio/whatsapp", data=form, headers={
                    "X-Twilio-Signature": good.compute_signature(f"{public}/webhooks/twilio/status", form)})),
                ("twilio body changed after signing", s.post(
                    f"{url}/webhooks/twilio/whatsapp", data={**form, "Body": "transfer"}, headers={
                        "X-Twilio-Signature": good.compute_signature(f"{public}/webhooks/twilio/whatsapp", form)})),
                ("twilio status forged", s.post(f"{url}/webhooks/twilio/status", data=status_form, headers={
                    "X-Twilio-Signature": forged.compute_signature(f"{public}/webhooks/twilio/status", status_form)})),
            ]
            # a valid signature from another Twilio account (a leaked token of a sub-account) is refused too
            other = {**form, "AccountSid": "AC" + "9" * 32}
            cases.append(("twilio other account", s.post(f"{url}/webhooks/twilio/whatsapp", data=other, headers={
                "X-Twilio-Signature": good.compute_signature(f"{public}/webhooks/twilio/whatsapp", other)})))
            tried = set()
            for name, request in cases:
                async with request as r:
                    assert r.status == 403, (name, r.status, await r.text())
                    tried.add(r.url.path)
            # every webhook the app serves was attacked (a new webhook route fails here until it is)
            webhooks = {route.resource.canonical for route in server.rt.app.router.routes()
                        if route.resource and route.resource.canonical.startswith("/webhooks/")}
            assert tried == webhooks, webhooks - tried
            await _nothing_stored(server)
            # the genuine ones are accepted: the refusals above were about the signatures
            async with s.post(f"{url}/webhooks/telegram", json=_update(),
                              headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}) as r:
                assert r.status == 200
            async with s.post(f"{url}/webhooks/twilio/whatsapp", data=form, headers={
                    "X-Twilio-Signature": good.compute_signature(f"{public}/webhooks/twilio/whatsapp", form)}) as r:
                assert r.status in {200, 204}, await r.text()
        assert await server.scalar(select(func.count()).select_from(inbox_items)) == 2
    finally:
        await server.stop()


async def test_a_telegram_webhook_without_a_configured_secret_is_refused(secure_settings: Any) -> None:
    server = LoketServer(secure_settings(TELEGRAM_WEBHOOK_SECRET=""), components=["bot.channels.telegram"])
    await server.start()
    try:
        async with aiohttp.ClientSession() as s:
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": ""}, {"X-Telegram-Bot-Api-Secret-Token": "x"}):
                async with s.post(f"{server.base_url}/webhooks/telegram", json=_update(), headers=headers) as r:
                    assert r.status == 403
                    assert "secret is not configured" in (await r.json())["error"]
        await _nothing_stored(server)
    finally:
        await server.stop()


def api_routes(server: LoketServer) -> list[tuple[str, str, str | None]]:
    """(method, path, required scope) of every /api/v1 route the app serves — from the router itself, so a
    feature's own routes (appointments …) and any new route are in the matrix."""
    out = []
    for route in server.rt.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/api/v1/") and route.method != "HEAD" and path != "/api/v1/openapi.json":
            out.append((route.method, path, getattr(route.handler, "required_scope", None)))
    return out


async def test_scope_matrix_for_every_api_route(loket: LoketServer) -> None:
    routes = api_routes(loket)
    assert {(m, p) for m, p, _ in routes} >= {(m, p) for m, p, _ in ROUTES}
    assert any(p.startswith("/api/v1/appointments") for _, p, _ in routes)
    unguarded = [(m, p) for m, p, scope in routes if scope is None]
    assert unguarded == [], "every API route needs @require_scope"
    tokens = {scope: await token(loket, scope, name=scope) for scope in SCOPES}
    async with aiohttp.ClientSession() as s:
        for method, path, needed in routes:
            url = loket.base_url + re.sub(r"\{[a-z_]+\}", "424242", path)
            async with s.request(method, url, json={}) as r:
                assert r.status == 401, (method, path)
                assert set((await r.json())["error"]) == {"code", "message"}
            for scope, tok in tokens.items():
                async with s.request(method, url, json={}, headers=bearer(tok)) as r:
                    allowed = scope == needed or scope == "admin"
                    if allowed:
                        assert r.status not in {401, 403}, (method, path, scope, r.status)
                    else:
                        assert r.status == 403, (method, path, scope, r.status)
                        assert (await r.json())["error"]["code"] == "forbidden"


async def test_throttle_ignores_spoofed_forwarded_for(settings_factory: Any) -> None:
    server = LoketServer(settings_factory(LOKET_API_MAX_FAILURES="3"))
    await server.start()
    try:
        async with aiohttp.ClientSession() as s:
            codes = []
            for i in range(6):
                async with s.get(f"{server.base_url}/api/v1/agents", headers={
                        "Authorization": f"Bearer lkt_{i:012x}_x", "X-Forwarded-For": f"10.0.0.{i}"}) as r:
                    codes.append(r.status)
        assert codes == [401, 401, 401, 429, 429, 429]
    finally:
        await server.stop()


async def test_secrets_are_never_logged(secure_settings: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    server = LoketServer(secure_settings())
    await server.start()
    try:
        tok = await token(server, "admin")
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{server.base_url}/webhooks/telegram", json=_update("nomor saya +6281298765432"),
                              headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}) as r:
                assert r.status == 200
            async with s.post(f"{server.base_url}/webhooks/telegram", json=_update(),
                              headers={"X-Telegram-Bot-Api-Secret-Token": "wrong-" + TELEGRAM_SECRET}) as r:
                assert r.status == 403
            async with s.post(f"{server.base_url}/api/v1/webhooks", headers=bearer(tok), json={
                    "url": "http://127.0.0.1:9/x", "events": ["message.created"],
                    "secret": "webhook-signing-secret-1234"}) as r:
                assert r.status == 201
            async with s.get(f"{server.base_url}/api/v1/agents", headers=bearer(tok + "x")) as r:
                assert r.status == 401
        import asyncio

        await asyncio.sleep(1.0)  # let the router and the dispatcher log what they log
    finally:
        await server.stop()
    out = "\n".join(JsonFormatter().format(rec) for rec in caplog.records)
    assert out, "expected some log lines"
    assert "telegram" in out  # the failed sends to the unreachable Bot API were logged (with the URL's host only)
    for secret in (tok, tok.split("_", 2)[2], TELEGRAM_SECRET, TWILIO_TOKEN, "webhook-signing-secret-1234",
                   TELEGRAM_TOKEN, TELEGRAM_TOKEN.split(":")[1],
                   "test-secret-key-for-loket-tests-0123456789", "6281298765432", "81298765432"):
        assert secret not in out, secret
    json.loads(out.splitlines()[0])
