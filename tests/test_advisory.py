"""One process at a time (storage/advisory.py): the lock is held for the block, and never left behind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.advisory import exclusive
from storage.db import make_engine
from tests.support import asyncpg_dsn

KEY = 0x6C6F6B6574207473  # "loket ts"


@pytest.fixture
async def sessions(pg_url: str) -> AsyncIterator[tuple[AsyncEngine, asyncpg.Connection]]:
    """Loket's engine, and another session on the same database (as another process would hold the lock)."""
    engine = make_engine(pg_url)
    other = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        yield engine, other
    finally:
        await other.close()
        await engine.dispose()


async def test_the_lock_is_held_for_the_block_and_released_after(
        sessions: tuple[AsyncEngine, asyncpg.Connection]) -> None:
    engine, other = sessions
    async with exclusive(engine, KEY) as conn:
        assert conn is not None
        assert not await other.fetchval("SELECT pg_try_advisory_lock($1)", KEY)
        async with exclusive(engine, KEY) as second:  # another pass, from this process or another
            assert second is None
    assert await other.fetchval("SELECT pg_try_advisory_lock($1)", KEY)
    async with exclusive(engine, KEY) as conn:
        assert conn is None  # held by the other session now


async def test_a_connection_lost_during_the_block_leaves_no_lock_and_no_error(
        sessions: tuple[AsyncEngine, asyncpg.Connection]) -> None:
    engine, other = sessions
    async with exclusive(engine, KEY) as conn:
        assert conn is not None
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        await other.execute("SELECT pg_terminate_backend($1)", pid)
    # the unlock failed on the dead connection: it was dropped, not pooled, and its session took the lock along
    assert await other.fetchval("SELECT pg_try_advisory_lock($1)", KEY)
    await other.execute("SELECT pg_advisory_unlock($1)", KEY)
    async with exclusive(engine, KEY) as conn:  # the pool hands out a working connection
        assert conn is not None and await conn.scalar(text("SELECT 1")) == 1
