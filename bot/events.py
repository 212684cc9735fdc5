"""Domain events after commit: in-process subscribers, fanned out across processes through Redis pub/sub."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("loket.events")

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]
CHANNEL = "loket:events"


def redis_client(url: str) -> Any:
    """A Redis client whose pool waits for a free connection instead of failing when many sends publish at
    once (redis-py's default pool refuses the 101st concurrent command), and that reconnects and retries a
    command up to 3 times when its connection was dropped (a Redis restart, ``CLIENT KILL``, a failover)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), 3)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=20, retry=retry)
    return aioredis.Redis.from_pool(pool)  # closing the client closes the pool


class EventBus:
    def __init__(self, redis_url: str | None = None, prefix: str = "") -> None:
        self._handlers: list[tuple[Handler, bool]] = []  # (handler, only this process's own events)
        self.redis_url = redis_url
        self.channel = prefix + CHANNEL
        self._redis: Any = None
        self._task: asyncio.Task[None] | None = None
        self.origin = f"{os.getpid()}:{id(self):x}"

    def subscribe(self, handler: Handler, *, local_only: bool = False) -> None:
        """``local_only``: hear only events this process published (per-process counters: each event is counted
        once, by the process where it happened), not those fanned out from other processes."""
        self._handlers.append((handler, local_only))

    async def start(self) -> None:
        if not self.redis_url:
            return
        self._redis = redis_client(self.redis_url)
        await self._redis.ping()
        self._task = asyncio.create_task(self._listen(), name="events-redis")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._redis is not None:
            await self._redis.aclose()

    async def publish(self, events: list[tuple[str, dict[str, Any]]], local: bool = True) -> None:
        """Deliver to this process's subscribers (unless ``local=False``) and to every other process."""
        if local:
            for name, payload in events:
                await self._deliver(name, payload)
        if self._redis is not None and events:
            body = json.dumps({"origin": self.origin, "events": events}, default=str)
            try:
                await self._redis.publish(self.channel, body)
            except Exception:  # noqa: BLE001 - live updates are best effort; the DB has the truth
                log.warning("could not publish %d events to Redis", len(events), exc_info=True)

    async def _deliver(self, name: str, payload: dict[str, Any], remote: bool = False) -> None:
        for handler, local_only in list(self._handlers):
            if remote and local_only:
                continue
            try:
                await handler(name, payload)
            except Exception:  # noqa: BLE001
                log.exception("event handler failed for %s", name)

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self.channel)
                async for item in pubsub.listen():
                    if item.get("type") != "message":
                        continue
                    data = json.loads(item["data"])
                    if data.get("origin") == self.origin:
                        continue
                    for name, payload in data["events"]:
                        await self._deliver(name, payload, remote=True)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reconnect after a dropped Redis connection
                log.warning("Redis event subscription dropped; reconnecting", exc_info=True)
                await asyncio.sleep(0.5)
