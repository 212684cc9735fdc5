"""Housekeeping in the background of ``loket run`` and ``loket worker``: the retention pass (``bot/retention.py``)
and, on PostgreSQL, the upkeep pass (``storage/upkeep.py``).

Retention: the first pass runs a minute after start (or after the interval, if shorter), then one every
``LOKET_HOUSEKEEPING_INTERVAL_SECONDS`` (default an hour; 0 switches the background pass off — ``loket db prune``
does the same by hand). With several workers on one PostgreSQL database, one process at a time runs a pass; the
others find its lock taken and wait for their next turn. Rows deleted are counted on ``/metrics`` as
``loket_rows_pruned_total``.

Upkeep: five seconds after start (or after the interval, if shorter), then every
``LOKET_DB_UPKEEP_INTERVAL_SECONDS`` (default 15; 0 = off; ``loket db upkeep`` by hand). A pass that finds nothing
due costs one query; one process at a time does the work. Tables analysed or vacuumed are counted as
``loket_db_upkeep_total``. When PostgreSQL's autovacuum is off, the first pass says so in the log, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bot.config import Settings
from bot.retention import RetentionPolicy, prune
from storage.db import is_sqlite
from storage.upkeep import Done, autovacuum_is_on, run_upkeep, table_stats

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("loket.housekeeping")
FIRST_PASS_AFTER = 60.0
FIRST_UPKEEP_AFTER = 5.0


def policy_from(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(inbox_days=settings.retain_inbox_days, outbox_days=settings.retain_outbox_days,
                           webhook_days=settings.retain_webhook_days, failed_days=settings.retain_failed_days)


class Housekeeping:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.policy = policy_from(rt.settings)
        self.interval = rt.settings.housekeeping_interval_seconds
        self.upkeep_interval = rt.settings.db_upkeep_interval_seconds
        self.passes = 0
        self.upkeep_passes = 0
        self._warned = False

    async def run_once(self) -> dict[str, int] | None:
        deleted = await prune(self.rt.engine, self.policy, self.rt.clock.now())
        self.passes += 1
        if deleted is None:
            log.info("retention: another process is running the pass on this database; leaving it to that one")
            return None
        metrics = self.rt.services.get("metrics")
        for table, n in deleted.items():
            if metrics is not None and n:
                metrics.rows_pruned(table, n)
        if any(deleted.values()):
            log.info("retention: deleted %s finished rows (%s)", sum(deleted.values()),
                     ", ".join(f"{t}={n}" for t, n in deleted.items() if n))
        return deleted

    async def upkeep_once(self) -> list[Done] | None:
        if not self._warned:
            self._warned = True
            if not await autovacuum_is_on(self.rt.engine):
                if await table_stats(self.rt.engine):
                    log.warning("PostgreSQL's autovacuum is off: Loket analyses and vacuums its own tables every "
                                "%gs (LOKET_DB_UPKEEP_INTERVAL_SECONDS); turn autovacuum on for the rest of the "
                                "database", self.upkeep_interval)
                else:
                    log.warning("PostgreSQL's autovacuum is off and the database user owns none of Loket's tables, "
                                "so nothing analyses or vacuums them: turn autovacuum on, or connect as the user "
                                "that ran `loket db upgrade`")
        done = await run_upkeep(self.rt.engine)
        self.upkeep_passes += 1
        metrics = self.rt.services.get("metrics")
        for d in done or []:
            if metrics is not None:
                metrics.table_upkept(d.task.table, d.task.action)
            log.info("upkeep: %s %s in %.0f ms (%s)", d.task.action, d.task.table, d.seconds * 1000, d.task.reason)
        return done

    async def run(self) -> None:
        await self._every(self.interval, min(self.interval, FIRST_PASS_AFTER), self.run_once, "retention")

    async def run_upkeep(self) -> None:
        await self._every(self.upkeep_interval, min(self.upkeep_interval, FIRST_UPKEEP_AFTER), self.upkeep_once,
                          "upkeep")

    @staticmethod
    async def _every(interval: float, first: float, work: Callable[[], Awaitable[Any]], name: str) -> None:
        await asyncio.sleep(first)
        while True:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed pass is retried at the next interval
                log.exception("%s pass failed; trying again in %ss", name, interval)
            await asyncio.sleep(interval)


def setup(rt: Runtime) -> None:
    keeper = Housekeeping(rt)
    rt.services["housekeeping"] = keeper
    if keeper.interval > 0:
        rt.add_task("housekeeping", keeper.run, roles={"all", "worker"})
    if keeper.upkeep_interval > 0 and not is_sqlite(rt.engine):
        rt.add_task("db-upkeep", keeper.run_upkeep, roles={"all", "worker"})
