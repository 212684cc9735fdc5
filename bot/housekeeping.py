"""Housekeeping: the retention pass (``bot/retention.py``) in the background of ``loket run`` and ``loket worker``.

The first pass runs a minute after start (or after the interval, if shorter), then one every
``LOKET_HOUSEKEEPING_INTERVAL_SECONDS`` (default an hour; 0 switches the background pass off — ``loket db prune``
does the same by hand). With several workers each runs its own pass: deleting is idempotent, and a second pass
over the same rows finds them gone. Rows deleted are counted on ``/metrics`` as ``loket_rows_pruned_total``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.retention import RetentionPolicy, prune

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("loket.housekeeping")
FIRST_PASS_AFTER = 60.0


def policy_from(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(inbox_days=settings.retain_inbox_days, outbox_days=settings.retain_outbox_days,
                           webhook_days=settings.retain_webhook_days, failed_days=settings.retain_failed_days)


class Housekeeping:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.policy = policy_from(rt.settings)
        self.interval = rt.settings.housekeeping_interval_seconds
        self.passes = 0

    async def run_once(self) -> dict[str, int]:
        deleted = await prune(self.rt.engine, self.policy, self.rt.clock.now())
        self.passes += 1
        metrics = self.rt.services.get("metrics")
        for table, n in deleted.items():
            if metrics is not None and n:
                metrics.rows_pruned(table, n)
        if any(deleted.values()):
            log.info("retention: deleted %s finished rows (%s)", sum(deleted.values()),
                     ", ".join(f"{t}={n}" for t, n in deleted.items() if n))
        return deleted

    async def run(self) -> None:
        await asyncio.sleep(min(self.interval, FIRST_PASS_AFTER))
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed pass is retried at the next interval
                log.exception("retention pass failed; trying again in %ss", self.interval)
            await asyncio.sleep(self.interval)


def setup(rt: Runtime) -> None:
    keeper = Housekeeping(rt)
    rt.services["housekeeping"] = keeper
    if keeper.interval > 0:
        rt.add_task("housekeeping", keeper.run, roles={"all", "worker"})
