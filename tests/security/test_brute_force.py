"""Console login brute force is throttled even when the guesses arrive all at once (per account and per address),
and so is guessing API tokens."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp

from agent_console.auth import MAX_FAILURES_ACCOUNT, MAX_FAILURES_IP
from tests.console.helpers import Agent, make_agent
from tests.support import LoketServer


async def _guesses(server: LoketServer, emails: list[str]) -> Counter[int]:
    """One wrong password per e-mail, all at the same moment, each from its own browser session."""
    clients = [Agent(server) for _ in emails]
    try:
        results = await asyncio.gather(*(c.login(e, password="wrong password") for c, e in zip(clients, emails,
                                                                                               strict=True)))
        return Counter(r.status for r in results)
    finally:
        for c in clients:
            await c.close()


async def test_concurrent_login_guesses_for_one_account_are_throttled(loket: LoketServer) -> None:
    await make_agent(loket, "victim@example.com")
    codes = await _guesses(loket, ["victim@example.com"] * 30)
    assert codes[401] == MAX_FAILURES_ACCOUNT and codes[429] == 30 - MAX_FAILURES_ACCOUNT, codes
    right = Agent(loket)
    try:
        assert (await right.login("victim@example.com")).status == 429  # locked even with the right password
    finally:
        await right.close()


async def test_password_spraying_from_one_address_is_throttled(loket: LoketServer) -> None:
    emails = [f"user{i}@example.com" for i in range(MAX_FAILURES_IP + 10)]
    for e in emails[:3]:
        await make_agent(loket, e)
    codes = await _guesses(loket, emails)
    assert codes[401] == MAX_FAILURES_IP and codes[429] == 10, codes


async def test_concurrent_api_token_guesses_are_throttled(settings_factory: Any) -> None:
    server = LoketServer(settings_factory(LOKET_API_MAX_FAILURES="5"))
    await server.start()
    try:
        async with aiohttp.ClientSession() as s:

            async def guess(i: int) -> int:
                async with s.get(f"{server.base_url}/api/v1/agents",
                                 headers={"Authorization": f"Bearer lkt_{i:012x}_guess"}) as r:
                    return r.status

            codes = Counter(await asyncio.gather(*(guess(i) for i in range(40))))
        assert codes[401] <= 5 and codes[429] >= 35, codes
    finally:
        await server.stop()
