"""Customer message (web chat) → the agent's console WebSocket event: p50/p99 over a bounded run.

    .venv/bin/python bench/console_latency.py [--messages 200] [--database-url postgresql+asyncpg://…/EMPTY_DB]
                                              [--redis-url redis://127.0.0.1:6379/0] [--browser]

Starts Loket in-process on a fresh database, signs an agent in, escalates one web chat conversation, then
sends N customer messages one at a time and times each until the console socket receives
``message.created`` for it (the socket is drained before each message, so no earlier frame is counted).
With ``--browser`` the agent is Debian's Chromium (Playwright) on the conversation page instead, and each
message is timed until it is shown there (a MutationObserver in the page notes the moment): event, fragment
fetch and DOM update included.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from storage.schema import upgrade  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.console.helpers import Agent, make_agent  # noqa: E402
from tests.support import LoketServer, WebChatClient  # noqa: E402


async def drain(ws: Any) -> None:
    """Read whatever the socket already holds (this process is idle, so it comes within a few ms)."""
    while True:
        try:
            await ws.receive(timeout=0.05)
        except TimeoutError:
            return


async def start_server(db_url: str | None, redis_url: str | None) -> LoketServer:
    tmp = Path(tempfile.mkdtemp(prefix="console-bench-"))
    url = db_url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    engine = create_async_engine(url)
    await upgrade(engine)
    await engine.dispose()
    extra = {"REDIS_URL": redis_url} if redis_url else {}  # events through Redis pub/sub, as across processes
    server = LoketServer(make_settings(url, tmp, LOKET_CONSOLE_TICK="0.5", **extra))
    await server.start()
    return server


async def run(n: int, db_url: str | None, redis_url: str | None = None) -> dict[str, float]:
    server = await start_server(db_url, redis_url)
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
                await drain(ws)  # frames of earlier messages (greeting, queue notice…) must not be counted
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
        return summary(lat)
    finally:
        await agent.close()
        await server.stop()


def summary(lat: list[float]) -> dict[str, float]:
    lat = sorted(lat)
    return {"n": len(lat), "p50_ms": statistics.median(lat), "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)],
            "max_ms": lat[-1]}


# In the page: when each customer message first appears on screen (a MutationObserver, so Playwright's own
# polling is not part of the figure).
SEEN = """() => { window.__seen = {};
  new MutationObserver(() => {
    for (const el of document.querySelectorAll(".msg.in .body")) {
      if (!(el.textContent in window.__seen)) { window.__seen[el.textContent] = Date.now(); }
    }
  }).observe(document.body, {childList: true, subtree: true}); }"""


async def run_browser(n: int, db_url: str | None, redis_url: str | None = None) -> dict[str, float]:
    from playwright.async_api import async_playwright
    from sqlalchemy import select

    from storage.models import conversations
    from tests.conftest_browser import CHROMIUM_ARGS, chromium_path
    from tests.console.test_browser import login

    server = await start_server(db_url, redis_url)
    try:
        await make_agent(server, "bench@example.com", max_chats=100)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = await login(browser, server, "bench@example.com")
            async with WebChatClient(server.base_url) as chat:
                await chat.say("halo")
                await chat.say("0")
                conv_id = (await server.fetch(select(conversations.c.id)))[0]["id"]
                await page.goto(f"{server.base_url}/console/c/{conv_id}")
                await page.wait_for_selector("body[data-ws=open]")
                await page.evaluate(SEEN)
                lat: list[float] = []
                for i in range(n):
                    text = f"pesan {i}"
                    t0 = time.time() * 1000  # wall clock, as the page's Date.now() (same machine)
                    await chat.send_text(text)
                    await page.wait_for_function("t => t in window.__seen", arg=text, timeout=5000)
                    lat.append(await page.evaluate("t => window.__seen[t]", text) - t0)
            await browser.close()
        return summary(lat)
    finally:
        await server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--database-url", help="an empty database (default: a fresh SQLite file)")
    ap.add_argument("--redis-url", help="carry the console's live events over Redis pub/sub")
    ap.add_argument("--browser", action="store_true", help="time until Chromium shows the message on the page")
    args = ap.parse_args()
    go = run_browser if args.browser else run
    print(json.dumps(asyncio.run(go(args.messages, args.database_url, args.redis_url)), indent=1))


if __name__ == "__main__":
    main()
