"""Chaos helpers for the fault suite: a proxy in front of a provider fake that injects 429/5xx bursts and slow
answers and records, for every send it forwarded, whether the answer reached the caller."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web


@dataclass
class Forwarded:
    key: str  # e.g. "<chat>:<text>"
    forwarded_at: float
    answered_at: float | None = None  # None: the caller was gone before the answer was written


class ChaosProxy:
    """Forwards every request to ``upstream``. For send calls (``is_send``) it may answer 429/5xx without
    forwarding (``error_rate``, or always during a burst) or forward and then answer slowly (``slow_rate``)."""

    def __init__(self, upstream: str, *, is_send: Any, key_of: Any, seed: int = 7) -> None:
        self.upstream = upstream.rstrip("/")
        self.is_send = is_send
        self.key_of = key_of
        self.rng = random.Random(seed)
        self.error_rate = 0.05
        self.slow_rate = 0.05
        self.slow = (0.2, 1.5)
        self.burst_until = 0.0
        self.forwarded: list[Forwarded] = []
        self.injected = {"429": 0, "5xx": 0, "slow": 0}
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def burst(self, seconds: float) -> None:
        self.burst_until = time.monotonic() + seconds

    def calm(self) -> None:
        self.error_rate = self.slow_rate = 0.0
        self.burst_until = 0.0

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def stop(self) -> None:
        if self._client:
            await self._client.close()
        if self._runner:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._client is not None
        body = await request.read()
        send = self.is_send(request, body)
        if send and (time.monotonic() < self.burst_until or self.rng.random() < self.error_rate):
            if self.rng.random() < 0.5:
                self.injected["429"] += 1
                return web.json_response({"ok": False, "error_code": 429, "description": "Too Many Requests: "
                                          "retry after 1", "parameters": {"retry_after": 1}}, status=429)
            self.injected["5xx"] += 1
            status = self.rng.choice([500, 502, 503])
            return web.json_response({"ok": False, "error_code": status, "description": "Bad Gateway"},
                                     status=status)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}}
        async with self._client.request(request.method, self.upstream + request.path_qs, data=body,
                                        headers=headers) as up:
            payload = await up.read()
            status, ctype = up.status, up.headers.get("Content-Type", "application/json")
        record = None
        if send and 200 <= status < 300:
            record = Forwarded(self.key_of(request, body), time.monotonic())
            self.forwarded.append(record)
            if self.rng.random() < self.slow_rate:
                self.injected["slow"] += 1
                await asyncio.sleep(self.rng.uniform(*self.slow))
        transport = request.transport
        if transport is None or transport.is_closing():
            return web.Response(status=499)
        resp = web.Response(body=payload, status=status, content_type=ctype.split(";")[0])
        await resp.prepare(request)
        await resp.write_eof()
        if record is not None and request.transport is not None and not request.transport.is_closing():
            record.answered_at = time.monotonic()
        return resp
