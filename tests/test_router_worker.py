"""The router worker's claim loops: an idle worker polls once per interval, however many loops it runs."""

from __future__ import annotations

import asyncio

from sqlalchemy import event

from bot.pipeline import RouterWorker
from storage.db import make_engine
from tests.support import wait_for


async def _noop(*_: object) -> None:
    return None


async def test_an_idle_worker_with_four_loops_sends_one_claim_per_interval(db_url: str) -> None:
    engine = make_engine(db_url)
    claims: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda conn, cur, stmt, *a: claims.append(stmt) if "FROM inbox_items" in stmt else None)
    # an idle claim never reaches the pipeline (nothing to route), so none is needed here
    worker = RouterWorker(engine, pipeline=None, publish=_noop, on_outbox=lambda: None,  # type: ignore[arg-type]
                          poll_interval=0.1)
    worker.loops = 4
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(1.05)
        idle = len(claims)
        # ~11 claims in 1.05 s at one per 0.1 s (fewer on a loaded machine); four polling loops made ~44
        assert 1 <= idle <= 20, claims[:3]
        claims.clear()
        worker.nudge()  # someone wrote an inbox item: every loop looks at once

        async def all_looked() -> bool:
            return len(claims) >= 4

        await wait_for(all_looked, timeout=5)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 5)
        await engine.dispose()
