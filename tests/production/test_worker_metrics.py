"""A ``loket worker`` serves /metrics, /healthz and /readyz on LOKET_WORKER_METRICS_PORT (and nothing else);
per-process counters count each event once, in the process where it happened."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.clock import Clock
from bot.config import ConfigError, Settings
from bot.events import EventBus
from bot.messages import InboundMessage
from bot.pipeline import InboxWriter
from bot.runtime import Runtime
from bot.serve import serve_ops
from storage.db import make_engine
from storage.models import inbox_items
from tests.conftest import BACKEND
from tests.fakes.telegram import FakeTelegram
from tests.processes import ROOT, LoketProcess
from tests.production.test_metrics_logs import sample
from tests.support import LoketServer, wait_for

TOKEN = "777:WORKERMETRICS"


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_a_worker_process_serves_metrics_health_and_readiness(db_url: str, tmp_path: Path) -> None:
    async with FakeTelegram(TOKEN) as tg:
        tg.add_chat(4242)
        env = {"DATABASE_URL": db_url, "LOKET_DEMO": "false", "LOKET_SECRET_KEY": "w" * 40,
               "LOKET_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT),
               "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE": tg.base_url, "TELEGRAM_WEBHOOK_SECRET": "s"}
        if BACKEND == "postgresql":
            env["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            env["LOKET_REDIS_PREFIX"] = f"wm{os.getpid()}:"
        worker = LoketProcess("worker", env, tmp_path, tmp_path / "worker.log")
        worker.start()
        engine = make_engine(db_url)
        try:
            await worker.wait_ready(90)
            base = f"http://127.0.0.1:{worker.port}"
            # a customer message, stored as a web process stores it; the worker routes and sends the reply
            writer = InboxWriter(engine, Clock(), lambda: None)
            assert await writer.submit(InboundMessage(channel="telegram", address="4242", provider_message_id="u1",
                                                      text="halo", display_name="Budi"))

            async def scraped() -> str | None:
                status, body = await _get(f"{base}/metrics")
                assert status == 200
                sent = sample(body, "loket_dispatch_results_total", channel="telegram", outcome="sent")
                return body if sent else None

            body = await wait_for(scraped, timeout=30, what="the worker's /metrics to count a sent reply")
            assert tg.sent_to(4242), "the reply reached the fake"
            assert sample(body, "loket_messages_total", channel="telegram", direction="in") == 1
            assert (sample(body, "loket_messages_total", channel="telegram", direction="out") or 0) >= 1
            assert (sample(body, "loket_dispatch_latency_seconds_count", channel="telegram") or 0) >= 1
            assert sample(body, "loket_process_info", role="worker") == 1
            assert (sample(body, "process_resident_memory_bytes") or 0) > 10_000_000
            assert sample(body, "loket_queue_depth", queue="inbox") == 0
            async with engine.connect() as conn:
                assert (await conn.execute(select(func.count()).select_from(inbox_items)
                                           .where(inbox_items.c.status == "done"))).scalar_one() == 1
            status, text = await _get(f"{base}/healthz")
            assert status == 200
            status, text = await _get(f"{base}/readyz")
            assert status == 200 and '"worker"' in text
            # a worker takes no webhooks and serves no console: only the three operator routes
            for path in ("/console", "/api/v1/openapi.json", "/widget.js"):
                assert (await _get(base + path))[0] == 404, path
        finally:
            await engine.dispose()
            assert worker.terminate() == 0, worker.log()
    assert "/metrics, /healthz, /readyz on http://127.0.0.1:" in worker.log_path.read_text()


async def test_readyz_is_503_when_a_background_loop_died(settings_factory: Any) -> None:
    server = LoketServer(settings_factory(), components=["bot.health"])

    async def broken() -> None:
        raise RuntimeError("the scheduler crashed")

    server.rt.add_task("scheduler", broken)
    await server.start()
    try:
        await asyncio.sleep(0.05)
        status, text = await _get(server.base_url + "/readyz")
        assert status == 503
        assert '"scheduler"' in text and "restart the process" in text
        assert (await _get(server.base_url + "/healthz"))[0] == 200
    finally:
        await server.stop()


async def test_a_taken_metrics_port_is_an_error_and_stops_the_worker(settings_factory: Any) -> None:
    rt = Runtime(settings_factory(), role="worker", components=["bot.health", "bot.metrics"])
    await rt.prepare(migrate=False)
    await rt.start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError) as err:
            await serve_ops(rt, "127.0.0.1", taken.getsockname()[1])
    assert err.value.errno == 98
    # the worker stopped instead of working on without its health checks: no loop of it is left running
    assert [t for t in asyncio.all_tasks() if t.get_name() in {"router-worker", "dispatcher"}] == []


def test_worker_metrics_port_setting() -> None:
    base = {"DATABASE_URL": "sqlite:///x.db", "LOKET_SECRET_KEY": "k" * 40}
    assert Settings.from_env(base, dotenv=False).worker_metrics_port == 9108
    assert Settings.from_env({**base, "LOKET_WORKER_METRICS_PORT": "9200"}, dotenv=False).worker_metrics_port == 9200
    assert Settings.from_env({**base, "LOKET_WORKER_METRICS_PORT": "off"}, dotenv=False).worker_metrics_port is None
    with pytest.raises(ConfigError, match="LOKET_WORKER_METRICS_PORT='metrics' is not a TCP port.*or off"):
        Settings.from_env({**base, "LOKET_WORKER_METRICS_PORT": "metrics"}, dotenv=False)


async def test_counters_hear_only_this_process_s_events(redis_url: str) -> None:
    """Two processes share Redis: a fanned-out event reaches the other's live-update handlers but not its
    counters, so a sum over all instances counts each message once."""
    prefix = f"evt{os.getpid()}:"
    a, b = EventBus(redis_url, prefix), EventBus(redis_url, prefix)
    heard: dict[str, list[str]] = {"live": [], "counter": [], "own": []}

    async def live(name: str, payload: dict[str, Any]) -> None:
        heard["live"].append(name)

    async def counter(name: str, payload: dict[str, Any]) -> None:
        heard["counter"].append(name)

    async def own(name: str, payload: dict[str, Any]) -> None:
        heard["own"].append(name)

    b.subscribe(live)
    b.subscribe(counter, local_only=True)
    a.subscribe(own, local_only=True)
    await a.start()
    await b.start()
    try:
        await asyncio.sleep(0.2)  # both subscribed
        await a.publish([("message.created", {"channel": "telegram", "direction": "in"})])
        async def arrived() -> list[str]:
            return heard["live"]

        await wait_for(arrived, what="the event to reach the other process")
        await asyncio.sleep(0.2)
        assert heard == {"live": ["message.created"], "counter": [], "own": ["message.created"]}
    finally:
        await a.stop()
        await b.stop()
