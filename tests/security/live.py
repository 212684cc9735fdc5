"""A Loket server in a background thread (its own event loop), for synchronous property-based tests
(hypothesis, schemathesis) that make plain HTTP calls."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

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
