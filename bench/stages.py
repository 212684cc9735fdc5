"""Where a reply's CPU goes: each stage of the pipeline measured alone, in one process, on one core.

    .venv/bin/python bench/stages.py                       # SQLite, 5,000 Telegram updates, all components
    .venv/bin/python bench/stages.py --database-url postgresql://postgres@127.0.0.1:5432/loket_stages
    .venv/bin/python bench/stages.py --profile receive     # cProfile one stage (receive | route | dispatch)

Stages (CPU time of this process per message, ``time.process_time``; database server CPU not included):

1. **receive** — what a Telegram webhook does after HTTP: parse and validate the Update, normalize it,
   persist it in the inbox (group commit, ``--batch`` updates in flight), without the HTTP server.
2. **route** — the router worker: claim, resolve customer and conversation, route, write the reply, its
   outbox row and the timeline, mark done, commit.
3. **dispatch** — the dispatcher's own work: claim outbox rows, hand them to a channel that answers at once,
   record the results (the HTTP request to the provider is not included).

The end-to-end figure, with HTTP on both sides, is ``bench/e2e.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import Settings  # noqa: E402
from bot.messages import OutboundMessage, ProviderReceipt  # noqa: E402
from bot.runtime import Runtime  # noqa: E402
from storage.db import make_engine  # noqa: E402

TOKEN = "123456789:AAbenchTOKEN0123456789abcdefghijklmno"


class InstantChannel:
    """Stands in for the Telegram channel in the dispatch stage: every send succeeds at once."""

    name = "telegram"

    def __init__(self) -> None:
        self.n = 0

    async def send(self, out: OutboundMessage) -> ProviderReceipt:
        self.n += 1
        return ProviderReceipt(provider_message_id=f"out:{out.address}:{self.n}")


def update(uid: int, chat: int, text: str) -> bytes:
    return json.dumps({"update_id": uid, "message": {
        "message_id": uid, "date": 1_700_000_000, "text": text,
        "chat": {"id": chat, "type": "private", "first_name": "X"},
        "from": {"id": chat, "is_bot": False, "first_name": "X", "language_code": "id"},
    }}).encode()


async def recreate_pg(url: str) -> None:
    import asyncpg

    base, _, name = url.rpartition("/")
    conn = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://") + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="loket-stages-"))
    url = args.database_url or f"sqlite:///{tmp / 'stages.db'}"
    if url.startswith("postgres"):
        await recreate_pg(url)
    settings = Settings.from_env({
        "DATABASE_URL": url, "LOKET_DATA_DIR": str(tmp / "data"), "LOKET_SECRET_KEY": "stages-" + "x" * 40,
        "LOKET_DEMO": "true" if args.demo else "false", "LOKET_LOG_LEVEL": "WARNING",
        "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": "s", "TELEGRAM_API_BASE": "http://127.0.0.1:9",
        "TELEGRAM_MAX_PER_SECOND": "0", "TELEGRAM_PER_CHAT_INTERVAL": "0",
    }, dotenv=False)
    engine = make_engine(settings.database_url)
    rt = Runtime(settings, role="web", engine=engine)
    await rt.prepare(migrate=True)
    await rt.start()
    channel = rt.services["telegram"]
    n, chats = args.messages, args.chats
    bodies = [update(i + 1, 10_000 + i % chats, args.text) for i in range(n)]
    results: dict[str, float] = {}
    profiler = cProfile.Profile() if args.profile else None

    async def stage(name: str, work: Any) -> None:
        if profiler and args.profile == name:
            profiler.enable()
        t0, w0 = time.process_time(), time.perf_counter()
        await work()
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
        if profiler and args.profile == name:
            profiler.disable()
        results[name] = cpu / n * 1e6
        print(f"{name:9} {cpu / n * 1e6:8.0f} µs CPU per message   ({n / wall:7.0f} msgs/s wall)", flush=True)

    async def receive() -> None:
        sem = asyncio.Semaphore(args.batch)

        async def one(body: bytes) -> None:
            async with sem:
                await channel.process(channel.parse_update(body))

        await asyncio.gather(*(one(b) for b in bodies))

    async def route() -> None:
        while await rt.worker.process_batch():
            pass

    async def dispatch() -> None:
        instant = InstantChannel()
        rt.channels.add(instant)  # type: ignore[arg-type]
        while True:
            rows = await rt.dispatcher.claim(args.batch)
            if not rows:
                break
            for row in rows:
                await rt.dispatcher._send_one(row)  # noqa: SLF001 - the stage without its task plumbing
            batch = []
            while not rt.dispatcher._results.empty():  # noqa: SLF001
                batch.append(rt.dispatcher._results.get_nowait())  # noqa: SLF001
            await rt.dispatcher._record(batch)  # noqa: SLF001
        assert instant.n == n, f"dispatched {instant.n} of {n}"

    rt.inbox.on_commit = lambda: None
    rt.worker.batch_size = args.batch
    await stage("receive", receive)
    await stage("route", route)
    await stage("dispatch", dispatch)
    print(f"{'total':9} {sum(results.values()):8.0f} µs CPU per message (without HTTP)")
    await rt.stop()
    if profiler:
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", ""))
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--chats", type=int, default=1000)
    ap.add_argument("--text", default="halo")
    ap.add_argument("--batch", type=int, default=64, help="updates in flight / messages per batch")
    ap.add_argument("--demo", action="store_true", help="load the demo flows and knowledge base")
    ap.add_argument("--profile", choices=["receive", "route", "dispatch"])
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
