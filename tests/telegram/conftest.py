"""Fixtures for the Telegram channel: the fake Bot API and a Loket wired to it through TELEGRAM_API_BASE."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.telegram import FakeTelegram, SentMessage
from tests.support import LoketServer, wait_for

TOKEN = "123:ABC"
SECRET = "s3cret"
COMPONENTS = ["bot.channels.telegram", "bot.health"]


def telegram_env(fake: FakeTelegram, **extra: str) -> dict[str, str]:
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "TELEGRAM_API_BASE": fake.base_url,
        "LOKET_PUBLIC_URL": "https://desk.example.test",
    }
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]  # the rate limiter then shares its counters through Redis
    env.update(extra)
    return env


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as tg:
        yield tg


@pytest.fixture
async def loket_tg(fake: FakeTelegram, settings_factory: Any) -> AsyncIterator[LoketServer]:
    server = LoketServer(settings_factory(**telegram_env(fake)), components=COMPONENTS)
    await server.start()
    fake.webhook = {"url": server.base_url + "/webhooks/telegram", "secret_token": SECRET}
    try:
        yield server
    finally:
        await server.stop()


async def wait_sent(fake: FakeTelegram, chat_id: int, n: int = 1, timeout: float = 10.0) -> list[SentMessage]:
    async def check() -> list[SentMessage] | None:
        got = fake.sent_to(chat_id)
        return got if len(got) >= n else None

    result: list[SentMessage] = await wait_for(check, timeout=timeout, what=f"{n} message(s) to chat {chat_id}")
    return result


async def wait_rows(loket: LoketServer, query: Any, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Rows of ``query`` once there are at least ``n`` (the router and dispatcher commit asynchronously)."""
    async def check() -> list[dict[str, Any]] | None:
        rows = await loket.fetch(query)
        return rows if len(rows) >= n else None

    result: list[dict[str, Any]] = await wait_for(check, timeout=timeout, what=f"{n} row(s) of {query}")
    return result


async def settle(seconds: float = 0.4) -> None:
    """Give a wrong implementation the time to do a second thing we then assert did not happen."""
    await asyncio.sleep(seconds)
