"""Reminder throughput: N due reminders dispatched at a configured provider rate.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/reminders_bench.py \
        --count 100000 --rate 400

Creates a fresh database, seeds N appointments whose reminder is due now (web chat customers, so the
"provider" is the web chat channel: no socket open → status sent), then runs the reminder scheduler in this
process (role web: no dispatcher here) and one ``loket worker`` subprocess that only dispatches (components:
web chat). Reports the achieved rate (reminders queued per second, and outbox rows sent per second), the
largest number queued in any one second (the limit must hold), duplicates per (appointment, stage) (must be 0)
and the scheduler's CPU: seconds of CPU of this process and its share of one core and of all Loket CPU.
Writes bench/REMINDERS_RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.appointments.models import appointments_t, providers_t, reminders_t, services_t  # noqa: E402
from bot.config import Settings, normalize_database_url  # noqa: E402
from bot.runtime import Runtime  # noqa: E402
from storage.db import make_engine  # noqa: E402
from storage.models import customers, identities, messages, outbox_items  # noqa: E402
from storage.schema import upgrade  # noqa: E402


async def seed(url: str, n: int) -> None:
    now = datetime.now(UTC)
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(services_t.insert().values(id=1, name="Kontrol", duration_minutes=30, created_at=now))
        await conn.execute(providers_t.insert().values(id=1, name="dr. Sari", location="Klinik",
                                                       timezone="Asia/Jakarta", working_hours={}, created_at=now))
    for lo in range(0, n, 5000):
        ids = range(lo + 1, min(n, lo + 5000) + 1)
        async with engine.begin() as conn:
            await conn.execute(customers.insert(), [dict(
                id=i, display_name=f"Pasien {i}", language="id", timezone="Asia/Jakarta", tags=[], attributes={},
                opted_out=False, created_at=now) for i in ids])
            await conn.execute(identities.insert(), [dict(
                id=i, customer_id=i, channel="webchat", address=f"v_bench{i:09d}", verified=True, unreachable=False,
                meta={}, created_at=now) for i in ids])
            await conn.execute(appointments_t.insert(), [dict(
                id=i, external_id=f"B{i}", customer_id=i, service_id=1, provider_id=1, location="Klinik",
                start_at=now + timedelta(hours=6), timezone="Asia/Jakarta", status="booked", language="id",
                source="import", meta={}, created_at=now, updated_at=now) for i in ids])
            await conn.execute(reminders_t.insert(), [dict(
                appointment_id=i, stage="2h", due_at=now - timedelta(minutes=1), status="pending", attempts=0,
                fallback=[], created_at=now, updated_at=now) for i in ids])
    await engine.dispose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=400.0, help="LOKET_REMINDER_RATE (reminders per second)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--output", default=str(ROOT / "bench" / "REMINDERS_RESULTS.md"))
    args = ap.parse_args()
    base = os.environ.get("DATABASE_URL", "")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"loket-bench-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    if base.startswith(("postgres", "postgresql")):
        admin_url = normalize_database_url(base)
        name = f"loket_bench_{uuid.uuid4().hex[:8]}"
        admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        async with admin.connect() as c:
            await c.execute(text(f'CREATE DATABASE "{name}"'))
        url = admin_url.rpartition("/")[0] + "/" + name
        backend = "PostgreSQL"
    else:
        admin, name = None, None
        url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        backend = "SQLite"
    engine = make_engine(url)
    await upgrade(engine)
    await engine.dispose()
    t_seed = time.perf_counter()
    await seed(url, args.count)
    seed_s = time.perf_counter() - t_seed
    env = {"DATABASE_URL": url, "LOKET_SECRET_KEY": "b" * 40, "LOKET_DATA_DIR": str(tmp / "data"),
           "LOKET_DEMO": "false", "LOKET_QUIET_HOURS": "", "LOKET_REMINDER_RATE": str(args.rate),
           "LOKET_LOG_LEVEL": "WARNING", "LOKET_PORT": "0"}
    dispatcher = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measured part
        [sys.executable, "-m", "bot.cli", "worker"], cwd=tmp, stdout=open(tmp / "dispatcher.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT, env={**os.environ, **env, "LOKET_COMPONENTS": "bot.channels.webchat"})
    rt = Runtime(Settings.from_env(env), role="web", components=["bot.channels.webchat", "bot.appointments"])
    sched = rt.services["reminders"]
    me = psutil.Process()
    disp = psutil.Process(dispatcher.pid)
    cpu0 = me.cpu_times()
    dcpu0 = disp.cpu_times()
    t0 = time.perf_counter()
    task = asyncio.create_task(sched.run())
    per_second: Counter[int] = Counter()
    last = 0
    queued_at_end = sent_at_end = 0.0
    try:
        while time.perf_counter() - t0 < args.timeout:
            await asyncio.sleep(0.25)
            now_sent = sched.sent
            per_second[int(time.perf_counter() - t0)] += now_sent - last
            last = now_sent
            if now_sent >= args.count and not queued_at_end:
                queued_at_end = time.perf_counter() - t0
            if queued_at_end:
                async with rt.engine.connect() as conn:
                    done = (await conn.execute(select(func.count()).select_from(outbox_items)
                                               .where(outbox_items.c.status == "sent"))).scalar_one()
                if done >= args.count:
                    sent_at_end = time.perf_counter() - t0
                    break
    finally:
        task.cancel()
        cpu1 = me.cpu_times()
        dcpu1 = disp.cpu_times()
        dispatcher.terminate()
        dispatcher.wait(30)
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(select(messages.c.meta).where(messages.c.purpose == "appointment_reminder"))).all()
        n_sent = (await conn.execute(select(func.count()).select_from(reminders_t)
                                     .where(reminders_t.c.status == "sent"))).scalar_one()
    await rt.engine.dispose()
    per_stage = Counter((r.meta["reply"]["meta"]["appointment_id"], r.meta["reply"]["meta"]["stage"]) for r in rows)
    dups = sum(v - 1 for v in per_stage.values() if v > 1)
    sched_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    disp_cpu = (dcpu1.user + dcpu1.system) - (dcpu0.user + dcpu0.system)
    wall = queued_at_end or (time.perf_counter() - t0)
    full = [v for s, v in sorted(per_second.items())[1:-1]]
    peak = max(per_second.values()) if per_second else 0
    lines = [
        "# Reminder scheduler benchmark", "",
        f"Command: `DATABASE_URL=… .venv/bin/python bench/reminders_bench.py --count {args.count} --rate {args.rate:g}`",
        "", f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({psutil.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} — other jobs were running), {backend}, Python {platform.python_version()}.",
        "", "| figure | value |", "|---|---|",
        f"| due reminders seeded | {args.count:,} (seeding took {seed_s:.1f} s) |",
        f"| configured provider rate (`LOKET_REMINDER_RATE`) | {args.rate:g} / s |",
        f"| reminders queued (status sent) | {n_sent:,} |",
        f"| achieved rate, scheduler (queued / s) | {n_sent / wall:.1f} / s over {wall:.1f} s |",
        f"| median / peak per one-second window | {sorted(full)[len(full) // 2] if full else 0} / {peak} |",
        f"| outbox rows sent by the dispatcher | all {args.count:,} after {sent_at_end:.1f} s |" if sent_at_end
        else f"| outbox rows sent by the dispatcher | not all within {args.timeout:.0f} s |",
        f"| duplicates per (appointment, stage) | **{dups}** |",
        f"| scheduler process CPU | {sched_cpu:.1f} s = {sched_cpu / wall:.0%} of one core |",
        f"| dispatcher process CPU | {disp_cpu:.1f} s |",
        f"| scheduler share of Loket CPU | {sched_cpu / max(0.001, sched_cpu + disp_cpu):.0%} "
        "(database server CPU not counted) |",
        "",
        "The scheduler process does nothing but the reminders (role `web`, no dispatcher); the dispatcher is a "
        "separate `loket worker` with only the web chat channel, which reports each message `sent`.",
    ]
    out = "\n".join(lines) + "\n"
    Path(args.output).write_text(out)
    print(out)
    if admin is not None:
        async with admin.connect() as c:
            await c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
    if dups:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
