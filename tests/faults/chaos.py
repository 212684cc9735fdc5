"""Fault injection in front of a provider fake: an aiohttp middleware on the fake's own server that answers send
calls with 429/5xx (randomly, and always during a burst) or answers them slowly, and records for every send the
fake accepted who sent it (the ``/via/{sender}`` prefix of the caller's API base URL) and whether the answer was
written back before the caller went away."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Forwarded:
    key: str  # "<channel>:<address>:<text>", the same key the checks use
    sender: str  # "<process>.<generation>", from the caller's API base URL
    forwarded_at: float  # time.monotonic() when the fake accepted it
    answered_at: float | None = None  # None: the caller was gone before the answer was written


class Chaos:
    """``Chaos(is_send, key_of, reject)``: ``is_send(request)`` picks the calls that send a message,
    ``key_of(request)`` names what the fake accepted (after the handler ran), ``reject(status)`` renders the
    provider's own error answer (429 carries the provider's retry hint)."""

    def __init__(self, *, is_send: Callable[[web.Request], bool], key_of: Callable[[web.Request], str],
                 reject: Callable[[int], web.Response], seed: int = 7) -> None:
        self.is_send = is_send
        self.key_of = key_of
        self.reject = reject
        self.rng = random.Random(seed)
        self.error_rate = 0.03
        self.slow_rate = 0.03
        self.slow = (0.2, 1.5)
        self.burst_until = 0.0
        self.forwarded: list[Forwarded] = []
        self.injected = {"429": 0, "5xx": 0, "slow": 0}

    def burst(self, seconds: float) -> None:
        self.burst_until = time.monotonic() + seconds

    def calm(self) -> None:
        self.error_rate = self.slow_rate = 0.0
        self.burst_until = 0.0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.is_send(request):
            return await handler(request)
        if time.monotonic() < self.burst_until or self.rng.random() < self.error_rate:
            status = 429 if self.rng.random() < 0.5 else self.rng.choice([500, 502, 503])
            self.injected["429" if status == 429 else "5xx"] += 1
            return self.reject(status)
        resp = await handler(request)
        record = None
        if 200 <= resp.status < 300:
            record = Forwarded(self.key_of(request), request.match_info.get("sender", ""), time.monotonic())
            self.forwarded.append(record)
            if self.rng.random() < self.slow_rate:
                self.injected["slow"] += 1
                await asyncio.sleep(self.rng.uniform(*self.slow))
        transport = request.transport
        if transport is None or transport.is_closing():
            return resp  # the caller is gone: the answer is never written (record.answered_at stays None)
        await resp.prepare(request)
        await resp.write_eof()
        if record is not None and request.transport is not None and not request.transport.is_closing():
            record.answered_at = time.monotonic()
        return resp

