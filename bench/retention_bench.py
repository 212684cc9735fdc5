"""Retention pass cost: deleting a month of finished inbox rows, and the pass when nothing is due.

    .venv/bin/python bench/retention_bench.py --rows 200000                 # SQLite (a temporary file)
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/retention_bench.py --rows 200000

Seeds a fresh database with ``--rows`` done inbox items, one every ``--spacing`` seconds up to now (the default
200,000 at 20 s span 46 days: ~35 % is older than the 30-day cutoff), then measures:

* the retention pass (``bot.retention.prune``): rows deleted, seconds, rows/s and the longest single chunk
  transaction — on SQLite the longest a webhook's write waits behind the pass;
* a second pass right after (nothing due): what every hourly pass costs once caught up;
* for comparison, on a second copy, the same rows deleted by one plain ``DELETE … WHERE status = 'done' AND
  processed_at < cutoff``: its time is how long it would hold the write lock (SQLite) or its row locks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages import recreate_pg  # noqa: E402 - bench/stages.py, beside this script

from bot.config import normalize_database_url  # noqa: E402
from bot.retention import RetentionPolicy, prune  # noqa: E402
from storage.db import make_engine  # noqa: E402
from storage.models import inbox_items  # noqa: E402
from storage.schema import upgrade  # noqa: E402

PG_DB = "loket_bench_retention"


async def fresh_url(base: str | None, tmp: Path, name: str) -> str:
    if not base:
        return f"sqlite+aiosqlite:///{tmp / (name + '.db')}"
    url = normalize_database_url(base.rsplit("/", 1)[0] + "/" + name)
    await recreate_pg(url)
    return url


async def seed(url: str, rows: int, spacing: float, now: datetime) -> None:
    engine = make_engine(url)
    try:
        await upgrade(engine)
        first = now - timedelta(seconds=spacing * rows)
        for lo in range(0, rows, 10_000):
            batch = []
            for i in range(lo, min(rows, lo + 10_000)):
                at = first + timedelta(seconds=spacing * i)
                batch.append({"channel": "telegram", "provider_message_id": f"u{i}", "key": f"telegram:{i % 5000}",
                              "payload": {"text": "halo"}, "status": "done", "attempts": 1, "last_error": None,
                              "received_at": at, "processed_at": at})
            async with engine.begin() as conn:
                await conn.execute(inbox_items.insert(), batch)
    finally:
        await engine.dispose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--spacing", type=float, default=20.0, help="seconds between seeded rows")
    args = ap.parse_args()
    base = os.environ.get("DATABASE_URL") or None
    now = datetime.now(UTC)
    policy = RetentionPolicy()
    with tempfile.TemporaryDirectory() as tmp:
        url = await fresh_url(base, Path(tmp), PG_DB)
        plain_url = await fresh_url(base, Path(tmp), PG_DB + "_plain")
        for u in (url, plain_url):
            await seed(u, args.rows, args.spacing, now)
        engine = make_engine(url)
        chunk_times: list[float] = []
        last = [time.perf_counter()]

        def tick(name: str, n: int) -> None:
            t = time.perf_counter()
            if name == "inbox_items":
                chunk_times.append(t - last[0])
            last[0] = t

        t0 = time.perf_counter()
        deleted = await prune(engine, policy, now, progress=tick)
        first_pass = time.perf_counter() - t0
        last[0] = time.perf_counter()
        t0 = time.perf_counter()
        again = await prune(engine, policy, now)
        second_pass = time.perf_counter() - t0
        async with engine.connect() as conn:
            left = (await conn.execute(select(func.count()).select_from(inbox_items))).scalar_one()
        await engine.dispose()

        plain = make_engine(plain_url)
        cutoff = now - timedelta(days=policy.inbox_days)
        t0 = time.perf_counter()
        async with plain.begin() as conn:
            plain_n = (await conn.execute(delete(inbox_items).where(
                inbox_items.c.status == "done", inbox_items.c.processed_at < cutoff))).rowcount
        plain_s = time.perf_counter() - t0
        await plain.dispose()
    db = "PostgreSQL" if base else "SQLite"
    n = deleted["inbox_items"]
    print(f"| {db} | {args.rows:,} | {n:,} | {first_pass:.2f} s ({n / first_pass:,.0f} rows/s) | "
          f"{max(chunk_times) * 1000:.1f} ms ({len(chunk_times)} chunks) | {second_pass * 1000:.1f} ms "
          f"({sum(again.values())} rows) | {plain_n:,} in {plain_s:.2f} s | {left:,} |")


if __name__ == "__main__":
    print("| database | rows | deleted | retention pass | longest chunk | next pass | one plain DELETE | left |")
    print("|---|---|---|---|---|---|---|---|")
    asyncio.run(main())
