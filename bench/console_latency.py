"""Customer message (web chat) → the agent's console WebSocket event: p50/p99 over a bounded run.

    .venv/bin/python bench/console_latency.py [--messages 200] [--database-url sqlite+aiosqlite:///...]

Starts Loket in-process on a fresh database, signs an agent in, escalates one web chat conversation, then
sends N customer messages one at a time and times each until the console socket receives
``message.created`` for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from storage.schema import upgrade  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.console.helpers import Agent, make_agent  # noqa: E402
from tests.support import LoketServer, WebChatClient  # noqa: E402


async def run(n: int, db_url: str | None) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="console-bench-"))
    url = db_url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    engine = create_async_engine(url)
    await upgrade(engine)
    await engine.dispose()
    server = LoketServer(make_settings(url, tmp, LOKET_CONSOLE_TICK="0.5"))
    await server.start()
    agent = Agent(server)
    try:
        await make_agent(server, "bench@example.com", max_chats=100)
        await agent.login("bench@example.com")
        ws = await agent.ws()
        async with WebChatClient(server.base_url) as chat:
            await chat.say("halo")
            await chat.say("0")
            lat: list[float] = []
            for i in range(n):
                t0 = time.perf_counter()
                await chat.send_text(f"pesan {i}")
                deadline = t0 + 5
                while time.perf_counter() < deadline:
                    msg = await ws.receive(timeout=5)
                    frame = json.loads(msg.data)
                    if frame.get("name") == "message.created":
                        lat.append((time.perf_counter() - t0) * 1000)
                        break
            await ws.close()
        lat.sort()
        return {"n": len(lat), "p50_ms": statistics.median(lat), "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)],
                "max_ms": lat[-1]}
    finally:
        await agent.close()
        await server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.database_url)), indent=1))


if __name__ == "__main__":
    main()
