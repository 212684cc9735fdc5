"""The supervisor dashboard on a month of history: how long `/console/dashboard` takes to answer.

    .venv/bin/python bench/dashboard_bench.py [--conversations 30000] [--messages-per-conversation 8]
                                              [--database-url postgresql+asyncpg://…/EMPTY_DB] [--repeat 5]

Seeds a fresh database with a busy desk's last 30 days (every conversation with its customer, identity, messages
and timeline; a fifth of them handed to agents, some with SLA breaches and CSAT scores), starts Loket in-process
on it, signs a supervisor in and times the dashboard page over HTTP (30 days, the default, and 7 days).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

from bot.clock import Clock  # noqa: E402
from storage.models import conversations, customers, identities, messages, touchpoints  # noqa: E402
from storage.schema import upgrade  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.console.helpers import Agent, make_agent  # noqa: E402
from tests.support import LoketServer  # noqa: E402

CHUNK = 5_000
CHANNELS = ("whatsapp", "telegram", "webchat", "email")


async def _put(engine: AsyncEngine, table: Any, rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), CHUNK):
        async with engine.begin() as conn:
            await conn.execute(insert(table), rows[i:i + CHUNK])


async def seed(engine: AsyncEngine, n_conv: int, per_conv: int, agent_ids: list[int]) -> dict[str, int]:
    """A month of history, oldest first, ids assigned here (the tables are empty)."""
    rnd = random.Random(7)
    now = Clock().now()
    custs, idents, convs, msgs, tps = [], [], [], [], []
    mid = 0
    # rows go in roughly in time order, as a desk writes them (the block-range index on messages relies on it)
    starts = sorted(now - timedelta(seconds=rnd.uniform(0, 30 * 86_400)) for _ in range(n_conv))
    for c, start in enumerate(starts, start=1):
        channel = rnd.choice(CHANNELS)
        custs.append({"id": c, "display_name": f"Pelanggan {c}", "language": "id", "timezone": "Asia/Jakarta", "tags": [],
                      "attributes": {}, "opted_out": False, "created_at": start, "last_seen_at": start})
        idents.append({"id": c, "customer_id": c, "channel": channel, "address": f"{channel}:{c}",
                       "display_name": None, "verified": False, "unreachable": False, "meta": {},
                       "created_at": start})
        human = rnd.random() < 0.2
        resolved = rnd.random() < 0.8
        conv = {"id": c, "customer_id": c, "identity_id": c, "channel": channel,
                "state": "resolved" if resolved else ("assigned" if human else "bot"), "priority": "normal",
                "labels": [], "meta": {}, "created_at": start, "updated_at": start,
                "assignee_id": rnd.choice(agent_ids) if human else None,
                "first_response_at": start + timedelta(minutes=rnd.uniform(1, 30)) if human else None,
                "resolved_at": start + timedelta(minutes=rnd.uniform(5, 240)) if resolved else None,
                "csat_score": rnd.randint(1, 5) if human and rnd.random() < 0.5 else None}
        convs.append(conv)
        tps.append({"customer_id": c, "conversation_id": c, "kind": "conversation_opened", "channel": channel,
                    "actor": "customer", "payload": {}, "created_at": start})
        for k in range(per_conv):
            mid += 1
            at = start + timedelta(seconds=20 * k)
            direction = "in" if k % 2 == 0 else "out"
            msgs.append({"id": mid, "conversation_id": c, "customer_id": c, "channel": channel,
                         "direction": direction, "author": "customer" if direction == "in" else "bot",
                         "body": f"pesan {k}", "choices": [], "attachments": [], "status": "received" if
                         direction == "in" else "delivered", "meta": {}, "created_at": at})
            tps.append({"customer_id": c, "conversation_id": c, "message_id": mid,
                        "kind": "message_in" if direction == "in" else "message_out", "channel": channel,
                        "actor": "customer" if direction == "in" else "bot", "payload": {"text": f"pesan {k}"},
                        "created_at": at})
            if direction == "out":
                tps.append({"customer_id": c, "conversation_id": c, "message_id": mid, "kind": "delivery",
                            "channel": channel, "actor": "system", "payload": {"status": "delivered"},
                            "created_at": at})
        if human:
            for kind in ("escalated", "assigned"):
                tps.append({"customer_id": c, "conversation_id": c, "kind": kind, "channel": channel,
                            "actor": "bot", "payload": {}, "created_at": start})
            if rnd.random() < 0.1:
                tps.append({"customer_id": c, "conversation_id": c, "kind": "sla_breached", "channel": channel,
                            "actor": "system", "payload": {}, "created_at": start})
    tps = [{"message_id": None, **t} for t in tps]  # one shape for every row of an executemany
    for table, rows in ((customers, custs), (identities, idents), (conversations, convs), (messages, msgs),
                        (touchpoints, tps)):
        t0 = time.perf_counter()
        await _put(engine, table, rows)
        print(f"  {table.name}: {len(rows):,} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    if engine.dialect.name == "postgresql":  # the sequences past the ids given here, statistics fresh
        async with engine.begin() as conn:
            for table in (customers, identities, conversations, messages):
                await conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), (SELECT max(id) FROM {table.name}))")
            await conn.exec_driver_sql("ANALYZE")
    return {"conversations": len(convs), "messages": len(msgs), "touchpoints": len(tps)}


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    url = args.database_url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    engine = create_async_engine(url)
    await upgrade(engine)
    await engine.dispose()
    server = LoketServer(make_settings(url, tmp, LOKET_DEMO="false"))
    await server.start()
    sup = Agent(server)
    try:
        agent_ids = [await make_agent(server, f"agent{i}@example.com") for i in range(10)]
        await make_agent(server, "sup@example.com", role="supervisor")
        print(f"seeding {args.conversations:,} conversations on {server.rt.engine.dialect.name}", flush=True)
        sizes = await seed(server.rt.engine, args.conversations, args.messages_per_conversation, agent_ids)
        await sup.login("sup@example.com")
        for days in (30, 7):
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                status, html = await sup.get(f"/console/dashboard?days={days}")
                times.append((time.perf_counter() - t0) * 1000)
                assert status == 200 and 'id="csat-avg"' in html, status
            print(f"dashboard, {days} days ({sizes}): median {statistics.median(times):.0f} ms, "
                  f"min {min(times):.0f}, max {max(times):.0f} over {args.repeat}", flush=True)
    finally:
        await sup.close()
        await server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=30_000)
    ap.add_argument("--messages-per-conversation", type=int, default=8)
    ap.add_argument("--database-url", help="an empty PostgreSQL database (default: a new SQLite file)")
    ap.add_argument("--repeat", type=int, default=5)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
