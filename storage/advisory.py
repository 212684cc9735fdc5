"""One process at a time: a PostgreSQL session advisory lock held on a pooled connection for a block.

Background passes that every ``loket run`` and ``loket worker`` start (the retention pass, the upkeep pass) do the
same work wherever they run; with several processes on one database, the first to take the pass's lock does it and
the others leave it until their next turn. The lock is a session lock on the connection the block holds, so it
goes with that connection if the process dies: nothing is ever left locked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


@asynccontextmanager
async def exclusive(engine: AsyncEngine, key: int) -> AsyncIterator[AsyncConnection | None]:
    """The connection holding advisory lock ``key`` for the block, or None when another session holds it.

    PostgreSQL only. The connection runs in autocommit: no transaction stays open while the block lasts (one would
    keep vacuum from reclaiming anything newer), and ``VACUUM`` can run on it.
    """
    async with engine.connect() as base:
        conn = await base.execution_options(isolation_level="AUTOCOMMIT")
        if not await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}):
            yield None
            return
        try:
            yield conn
        finally:
            try:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            except Exception:  # noqa: BLE001 - never pool a connection that may still hold the lock
                await base.invalidate()  # closing the session releases its locks
