"""Pooled PostgreSQL connections: a dead one is replaced at checkout, without a ping on every checkout.

The pool pings a connection only when it sat idle (``storage.db._ping_after_idle``); one checked in moments
ago is only checked locally, and a connection whose backend was terminated while it was pooled is replaced
either way. This is about the PostgreSQL engine, so on the SQLite pass it runs against the local PostgreSQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import normalize_database_url
from storage import db
from storage.db import make_engine
from tests.support import asyncpg_dsn, local_pg_url, pg_connect_or_fail


@pytest.fixture
async def pg_url(db_url: str) -> str:
    """The suite's PostgreSQL database, or on the SQLite pass the local one (as Redis, it must be running)."""
    url = normalize_database_url(db_url) if db_url.startswith("postgresql") else local_pg_url()
    await (await pg_connect_or_fail(url)).close()
    return url


async def _two_pids(engine: AsyncEngine) -> list[int]:
    async with engine.begin() as a, engine.begin() as b:
        return [await a.scalar(text("SELECT pg_backend_pid()")), await b.scalar(text("SELECT pg_backend_pid()"))]


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ping the pool sends (each is three round trips with asyncpg: BEGIN, the ping, ROLLBACK)."""
    seen: list[Any] = []
    ping = AsyncAdapt_asyncpg_connection.ping

    def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        seen.append(self)
        ping(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.3)
    return seen


@pytest.mark.parametrize("idle", [False, True], ids=["just-used", "idle"])
async def test_a_connection_terminated_in_the_pool_is_replaced_at_checkout(
        pg_url: str, idle: bool, pings: list[Any]) -> None:
    url = pg_url
    engine = make_engine(url)
    admin = await asyncpg.connect(asyncpg_dsn(url))
    try:
        pids = await _two_pids(engine)
        assert await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid = any($1::int[])", pids) == 2
        await asyncio.sleep(0.6 if idle else 0.05)
        now = await _two_pids(engine)  # both pooled connections are dead: both replaced, the caller sees nothing
        assert not set(now) & set(pids)
    finally:
        await admin.close()
        await engine.dispose()


async def test_only_a_connection_that_sat_idle_is_pinged(pg_url: str, pings: list[Any]) -> None:
    engine = make_engine(pg_url)
    try:
        first = await _two_pids(engine)
        pings.clear()
        for _ in range(5):  # in steady use a checkout sends nothing before the caller's own statement
            assert sorted(await _two_pids(engine)) == sorted(first)
        assert pings == []
        await asyncio.sleep(0.6)
        assert sorted(await _two_pids(engine)) == sorted(first)
        assert len(pings) == 2  # idle past the limit: each pinged once at checkout, then used
    finally:
        await engine.dispose()
