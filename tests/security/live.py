"""A Loket server in a background thread (its own event loop), for synchronous property-based tests
(hypothesis, schemathesis) that make plain HTTP calls."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp

from bot.config import Settings
from tests.support import LoketServer


class ThreadedLoket:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: LoketServer | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="loket-live", daemon=True)

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ThreadedLoket:
        self.thread.start()

        async def start() -> LoketServer:
            server = LoketServer(self.settings)
            await server.start()
            return server

        self.server = self.run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return self.server.base_url


class InlineLoket:
    """A Loket app on an event loop of this thread, for synchronous property-based tests that make many small
    requests: each call runs the loop until that request is answered (no thread, no second interpreter lock
    holder). The HTTP is real (loopback, keep-alive), so the app's middlewares and routing are what answers."""

    def __init__(self, settings: Settings, role: str = "web") -> None:
        self.settings = settings
        self.role = role
        self.loop = asyncio.new_event_loop()
        self.server: LoketServer | None = None
        self.session: aiohttp.ClientSession | None = None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def __enter__(self) -> InlineLoket:
        async def start() -> None:
            self.server = LoketServer(self.settings, role=self.role)
            await self.server.start()
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

        self.run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self.session is not None:
                await self.session.close()
            if self.server is not None:
                await self.server.stop()

        self.run(stop())
        self.loop.close()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        async def go() -> int:
            assert self.server is not None and self.session is not None
            async with self.session.post(self.server.base_url + path, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        return int(self.run(go()))
