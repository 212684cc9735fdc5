"""Shared helpers for the production tests: tokens, seeded conversations, an HTTP receiver for webhooks."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from bot.api.auth import create_token
from storage.models import conversations, customers, identities
from tests.support import LoketServer


async def token(loket: LoketServer, *scopes: str, name: str = "test") -> str:
    async with loket.rt.engine.begin() as conn:
        _, plain = await create_token(conn, name, list(scopes), loket.rt.clock.now())
    return plain


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def seed_conversation(loket: LoketServer, channel: str = "webchat", address: str = "visitor-1",
                            state: str = "bot", last_inbound_at: Any = None, **conv: Any) -> dict[str, int]:
    now = loket.rt.clock.now()
    async with loket.rt.engine.begin() as conn:
        cid = (await conn.execute(customers.insert().returning(customers.c.id), {
            "display_name": "Siti", "language": "id", "timezone": "Asia/Jakarta", "tags": [], "attributes": {},
            "opted_out": False, "created_at": now})).scalar_one()
        iid = (await conn.execute(identities.insert().returning(identities.c.id), {
            "customer_id": cid, "channel": channel, "address": address, "verified": False, "unreachable": False,
            "meta": {}, "created_at": now, "last_inbound_at": last_inbound_at})).scalar_one()
        vid = (await conn.execute(conversations.insert().returning(conversations.c.id), {
            "customer_id": cid, "identity_id": iid, "channel": channel, "state": state, "priority": "normal",
            "labels": [], "meta": {}, "created_at": now, "updated_at": now, **conv})).scalar_one()
    return {"customer_id": cid, "identity_id": iid, "conversation_id": vid}


class Receiver:
    """A webhook receiver on 127.0.0.1: records requests; answers from a script of status codes (then 200)."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"headers": dict(request.headers), "body": body})
        status = self.script.pop(0) if self.script else 200
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def wait(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        for _ in range(int(timeout / 0.05)):
            if len(self.requests) >= n:
                return self.requests
            await asyncio.sleep(0.05)
        raise AssertionError(f"receiver got {len(self.requests)} requests, wanted {n}")
