"""Exactly one message per stage with real worker processes, one of them killed with SIGKILL mid-run.

PostgreSQL: 10,000 appointments, two ``loket worker`` processes claiming with
SKIP LOCKED (one due stage each, to stay within the time bound). SQLite: the single-consumer variant — one worker, killed and started again, fewer rows.
Messages go out on the web chat channel (no socket open → status ``sent``); we count the message rows per
(appointment, stage): every stage must have exactly one.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from bot.appointments.models import appointments_t, providers_t, reminders_t, services_t
from storage.db import make_engine
from storage.models import customers, identities, messages, outbox_items
from tests.conftest import BACKEND
from tests.processes import LoketProcess

PG = BACKEND == "postgresql"
N = 10_000 if PG else 600
# PostgreSQL: one due stage per appointment keeps the run inside the time bound on a shared 2-core CI box;
# SQLite: both default stages.
STAGES = ("2h",) if PG else ("24h", "2h")


async def _seed(db_url: str, n: int) -> None:
    now = datetime.now(UTC)
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(services_t.insert().values(id=1, name="Kontrol", duration_minutes=30,
                                                          reminder_stages=None, created_at=now))
            await conn.execute(providers_t.insert().values(id=1, name="dr. Sari", location="Klinik",
                                                           timezone="Asia/Jakarta", working_hours={},
                                                           created_at=now))
            for lo in range(0, n, 2000):
                ids = range(lo + 1, min(n, lo + 2000) + 1)
                await conn.execute(customers.insert(), [dict(
                    id=i, display_name=f"Pasien {i}", language="id", timezone="Asia/Jakarta", tags=[],
                    attributes={}, opted_out=False, created_at=now) for i in ids])
                await conn.execute(identities.insert(), [dict(
                    id=i, customer_id=i, channel="webchat", address=f"v_load{i:08d}", verified=True,
                    unreachable=False, meta={}, created_at=now) for i in ids])
                await conn.execute(appointments_t.insert(), [dict(
                    id=i, external_id=f"L{i}", customer_id=i, service_id=1, provider_id=1, location="Klinik",
                    start_at=now + timedelta(hours=5), timezone="Asia/Jakarta", status="booked", channel=None,
                    language="id", source="import", meta={}, created_at=now, updated_at=now) for i in ids])
                await conn.execute(reminders_t.insert(), [dict(
                    appointment_id=i, stage=stage, due_at=now - timedelta(minutes=1), status="pending",
                    attempts=0, fallback=[], created_at=now, updated_at=now)
                    for i in ids for stage in STAGES])
    finally:
        await engine.dispose()


async def _count(db_url: str) -> tuple[int, int]:
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            sent = (await conn.execute(select(func.count()).select_from(reminders_t)
                                       .where(reminders_t.c.status == "sent"))).scalar_one()
            other = (await conn.execute(select(func.count()).select_from(reminders_t)
                                        .where(reminders_t.c.status.in_(("failed", "skipped"))))).scalar_one()
            return int(sent), int(other)
    finally:
        await engine.dispose()


async def test_every_stage_sent_exactly_once_across_a_kill(db_url: str, tmp_path: Path) -> None:
    await _seed(db_url, N)
    env = {
        "DATABASE_URL": db_url, "LOKET_SECRET_KEY": "k" * 40, "LOKET_DATA_DIR": str(tmp_path / "data"),
        "LOKET_DEMO": "false", "LOKET_QUIET_HOURS": "", "LOKET_REMINDER_RATE": "0",
        "LOKET_REMINDER_LEASE_SECONDS": "2", "LOKET_REMINDER_POLL_SECONDS": "0.2", "LOKET_REMINDER_BATCH": "100",
        "LOKET_LOG_LEVEL": "WARNING", "LOKET_PORT": "0",
        "LOKET_COMPONENTS": "bot.channels.webchat,bot.health,bot.appointments",
    }
    total = len(STAGES) * N
    workers = [LoketProcess("worker", env, tmp_path, tmp_path / f"w{i}.log") for i in range(2 if PG else 1)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 80
    killed = restarted = False
    try:
        while time.monotonic() < deadline:
            sent, other = await _count(db_url)
            assert other == 0, f"{other} reminders failed or were skipped:\n{workers[0].log()}"
            if not killed and sent >= total // 4:
                workers[0].kill()  # SIGKILL, mid-batch
                killed = True
                if not PG:  # single consumer: start it again
                    workers.append(LoketProcess("worker", env, tmp_path, tmp_path / "w-again.log"))
                    workers[-1].start()
                    restarted = True
            if sent == total:
                break
            await asyncio.sleep(0.3)
        assert killed and (PG or restarted)
        assert sent == total, f"only {sent}/{total} sent in time:\n{workers[-1].log()}"
    finally:
        for w in workers:
            w.kill()
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(messages.c.meta).where(
                messages.c.purpose == "appointment_reminder"))).all()
            outbox = (await conn.execute(select(func.count()).select_from(outbox_items))).scalar_one()
    finally:
        await engine.dispose()
    per_stage = Counter((r.meta["reply"]["meta"]["appointment_id"], r.meta["reply"]["meta"]["stage"]) for r in rows)
    duplicates = {k: v for k, v in per_stage.items() if v > 1}
    assert duplicates == {}
    assert len(per_stage) == total and len(rows) == total
    assert outbox == total
