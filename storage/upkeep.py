"""Upkeep of Loket's PostgreSQL tables: planner statistics kept fresh, dead rows vacuumed when nobody else does.

PostgreSQL plans a prepared statement from what it knows of the tables, and a connection keeps the plan it made
(after five runs, a generic plan) until something about a table it reads changes: an ``ANALYZE``, a ``VACUUM`` or
DDL. Autovacuum normally does both jobs. Where it is off (``autovacuum = off``, or ``autovacuum_enabled = false``
on a table), nothing ever tells the connections that a table has grown: the plans made while the queues were nearly
empty — sequential scans, hash joins — are kept as the tables grow, and every batch of the message path reads whole
tables (measured: 727 replies/s after 75 s of load, against 1,163 with this pass; BENCHMARKS.md §7). Without
vacuum, the rows that updates leave behind are never reclaimed either.

So a pass every ``LOKET_DB_UPKEEP_INTERVAL_SECONDS`` reads ``pg_stat_user_tables`` for Loket's tables (one query)
and applies autovacuum's own rule (``due``): a table whose rows changed by more than 50 + 10 % of its size since it
was last analysed is analysed; a table with more than 50 + 20 % dead rows, or 1,000 + 20 % rows inserted since its
last vacuum, is vacuumed. Where autovacuum is on, the pass only analyses a table that was never analysed (a new
installation's first minute, before autovacuum's first round); the rest is left to autovacuum. Vacuum is paced
as autovacuum paces it (``vacuum_cost_delay`` 2 ms). One process at a time runs the pass (an advisory lock), so
several workers do not analyse the same table twice. SQLite needs none of this: its planner uses the indexes
without statistics, and it reuses freed pages by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.advisory import exclusive
from storage.db import is_sqlite
from storage.schema import load_all_models

# pg_try_advisory_lock key of the pass (any constant; "loket up" in ASCII)
LOCK_KEY = 0x6C6F6B6574207570


@dataclass(frozen=True)
class Thresholds:
    """PostgreSQL's autovacuum defaults (``autovacuum_*_threshold`` and ``_scale_factor``)."""

    analyze_base: int = 50
    analyze_scale: float = 0.1
    vacuum_base: int = 50
    vacuum_scale: float = 0.2
    insert_base: int = 1000
    insert_scale: float = 0.2


@dataclass(frozen=True)
class TableStats:
    """One table as ``pg_stat_user_tables`` and ``pg_class`` see it."""

    table: str
    rows: float  # reltuples: the size the planner last learned (-1: never analysed or vacuumed)
    live: int  # rows counted by the statistics now
    dead: int
    changed: int  # rows inserted, updated or deleted since the last analyse
    inserted: int  # rows inserted since the last vacuum
    analyzed_at: datetime | None  # by anyone: ANALYZE or autovacuum
    vacuumed_at: datetime | None
    autovacuum: bool  # autovacuum looks after this table (on, and not switched off for it)


@dataclass(frozen=True)
class Task:
    table: str
    vacuum: bool
    analyze: bool
    reason: str

    @property
    def action(self) -> str:
        return " + ".join(a for a, on in (("vacuum", self.vacuum), ("analyze", self.analyze)) if on)


def due(stats: list[TableStats], limits: Thresholds = Thresholds()) -> list[Task]:
    """What the pass should do now: autovacuum's rule, for the tables autovacuum does not look after (and, for the
    ones it does, only a first analyse it has not made yet). Pure: it reads numbers and returns tasks."""
    tasks: list[Task] = []
    for s in stats:
        size = max(s.rows, 0.0)
        reasons: list[str] = []
        analyze_at = limits.analyze_base + limits.analyze_scale * size
        analyze = s.changed > analyze_at and (not s.autovacuum or s.analyzed_at is None)
        if analyze:
            reasons.append(f"{s.changed:,} rows changed since it was {'last' if s.analyzed_at else 'never'} "
                           f"analysed (over {analyze_at:,.0f})")
        vacuum = False
        if not s.autovacuum:
            dead_at = limits.vacuum_base + limits.vacuum_scale * size
            inserted_at = limits.insert_base + limits.insert_scale * size
            if s.dead > dead_at:
                vacuum = True
                reasons.append(f"{s.dead:,} dead rows (over {dead_at:,.0f})")
            if s.inserted > inserted_at:
                vacuum = True
                reasons.append(f"{s.inserted:,} rows inserted since the last vacuum (over {inserted_at:,.0f})")
        if analyze or vacuum:
            tasks.append(Task(s.table, vacuum=vacuum, analyze=analyze, reason="; ".join(reasons)))
    return tasks


# ------------------------------------------------------------------------------------------------------------- I/O

# autovacuum runs (it needs the statistics that track_counts collects)
_AUTOVACUUM_ON = "current_setting('autovacuum')::boolean AND current_setting('track_counts')::boolean"
_STATS = text(f"""
SELECT s.relname, c.reltuples, s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze, s.n_ins_since_vacuum,
       greatest(s.last_analyze, s.last_autoanalyze), greatest(s.last_vacuum, s.last_autovacuum),
       {_AUTOVACUUM_ON}
         AND NOT coalesce('autovacuum_enabled=false' = ANY(c.reloptions)
                          OR 'autovacuum_enabled=off' = ANY(c.reloptions), false)
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND s.relname = ANY(:tables)
  AND pg_has_role(current_user, c.relowner, 'USAGE')  -- only a table's owner may analyse or vacuum it
ORDER BY s.relname
""")


def loket_tables() -> list[str]:
    return sorted(load_all_models().tables)


async def table_stats(engine: AsyncEngine) -> list[TableStats]:
    """Loket's tables as PostgreSQL's statistics see them ([] on SQLite). Tables owned by a role that the database
    user is not a member of are left out: PostgreSQL would skip them with a warning on every pass."""
    if is_sqlite(engine):
        return []
    async with engine.connect() as conn:
        return await _read_stats(conn)


async def _read_stats(conn: AsyncConnection) -> list[TableStats]:
    rows = (await conn.execute(_STATS, {"tables": loket_tables()})).all()
    return [TableStats(r[0], float(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), r[6], r[7], bool(r[8]))
            for r in rows]


async def autovacuum_is_on(engine: AsyncEngine) -> bool:
    """True on SQLite (nothing to do) and where PostgreSQL's autovacuum (and the statistics it needs) are on."""
    if is_sqlite(engine):
        return True
    async with engine.connect() as conn:
        return bool(await conn.scalar(text(f"SELECT {_AUTOVACUUM_ON}")))


@dataclass(frozen=True)
class Done:
    task: Task
    seconds: float


async def run_upkeep(engine: AsyncEngine, limits: Thresholds = Thresholds()) -> list[Done] | None:
    """One pass: what ``due`` finds, done table by table. None if another process holds the pass's lock."""
    if is_sqlite(engine):
        return []
    async with exclusive(engine, LOCK_KEY) as conn:  # autocommit: VACUUM cannot run in a transaction
        if conn is None:
            return None
        try:
            tasks = due(await _read_stats(conn), limits)
            done: list[Done] = []
            if tasks:
                await conn.execute(text("SET vacuum_cost_delay = '2ms'"))  # autovacuum's pace, not full speed
            for task in tasks:
                started = time.monotonic()
                await conn.execute(text(_command(conn.dialect, task)))
                done.append(Done(task, time.monotonic() - started))
            return done
        finally:
            await conn.execute(text("RESET vacuum_cost_delay"))


def _command(dialect: Any, task: Task) -> str:
    name = dialect.identifier_preparer.quote(task.table)
    if task.vacuum:
        return f"VACUUM (ANALYZE) {name}" if task.analyze else f"VACUUM {name}"
    return f"ANALYZE {name}"
