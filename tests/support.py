"""Helpers for tests: a Loket server on a free port, a web chat client, waiting for conditions."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from sqlalchemy import select

from bot.clock import Clock
from bot.config import Settings
from bot.runtime import Runtime
from storage.models import messages


class LoketServer:
    def __init__(self, settings: Settings, *, clock: Clock | None = None, role: str = "all",
                 components: list[str] | None = None) -> None:
        self.settings = settings
        self.rt = Runtime(settings, role=role, clock=clock, components=components)
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.rt.prepare(migrate=False)
        await self.rt.start()
        self.runner = web.AppRunner(self.rt.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.settings.port or 0)
        await site.start()
        server = site._server  # noqa: SLF001 - the bound port of port 0
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.shutdown()
        await self.rt.stop()
        if self.runner:
            await self.runner.cleanup()

    async def fetch(self, query: Any) -> list[dict[str, Any]]:
        async with self.rt.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings().all()]

    async def scalar(self, query: Any) -> Any:
        async with self.rt.engine.connect() as conn:
            return (await conn.execute(query)).scalar()

    async def outbound_texts(self) -> list[str]:
        rows = await self.fetch(select(messages.c.body).where(messages.c.direction == "out").order_by(messages.c.id))
        return [r["body"] for r in rows]


async def scrape(loket: LoketServer) -> str:
    """The server's ``/metrics`` page (Prometheus text)."""
    async with aiohttp.ClientSession() as s, s.get(f"{loket.base_url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` whose labels include ``labels``, from a ``/metrics`` page."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"([a-z_]+)(\{([^}]*)\})? ([0-9.e+-]+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/test"


def local_pg_url() -> str:
    """The local PostgreSQL that tests about PostgreSQL use on the SQLite pass (``LOKET_TEST_PG_URL``)."""
    from bot.config import normalize_database_url

    return normalize_database_url(os.environ.get("LOKET_TEST_PG_URL", LOCAL_PG))


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as asyncpg takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def pg_connect_or_fail(url: str) -> asyncpg.Connection:
    """A connection to the PostgreSQL at ``url``; the test fails (never skips) if it does not answer."""
    try:
        return await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {url} does not answer ({exc}); start it (see README → Development) "
                    "or point LOKET_TEST_PG_URL at one")


def cli_env(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment a ``loket`` command gets in a test (wide columns, so rich tables do not wrap)."""
    return {"DATABASE_URL": db_url, "LOKET_DATA_DIR": str(tmp_path / "data"), "LOKET_SECRET_KEY": "k" * 40,
            "COLUMNS": "200", **extra}


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05,
                   what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class WebChatClient:
    """Speaks the web chat protocol (docs/webchat.md) like the widget does."""

    def __init__(self, base_url: str, visitor: str | None = None, lang: str | None = None) -> None:
        self.base_url = base_url
        self.visitor = visitor
        self.lang = lang
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.frames: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._new = asyncio.Event()

    async def __aenter__(self) -> WebChatClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self.session = aiohttp.ClientSession()
        params = {}
        if self.visitor:
            params["visitor"] = self.visitor
        if self.lang:
            params["lang"] = self.lang
        self.ws = await self.session.ws_connect(self.base_url + "/webchat/ws", params=params)
        first = await self.ws.receive_json(timeout=10)
        if first["type"] == "visitor":
            self.visitor = first["token"]
            first = await self.ws.receive_json(timeout=10)
        assert first["type"] == "history", first
        self.history = first["messages"]
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))
                self._new.set()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self.session:
            await self.session.close()

    async def send_text(self, text: str, client_id: str | None = None) -> str:
        cid = client_id or uuid.uuid4().hex
        assert self.ws is not None
        await self.ws.send_json({"type": "message", "client_id": cid, "text": text})
        return cid

    async def choose(self, value: str, label: str | None = None) -> str:
        cid = uuid.uuid4().hex
        assert self.ws is not None
        frame = {"type": "choice", "client_id": cid, "value": value}
        if label:
            frame["label"] = label
        await self.ws.send_json(frame)
        return cid

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    def replies(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "message"]

    async def wait_frame(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                         start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            for f in self.frames[seen:]:
                if pred(f):
                    return f
            seen = len(self.frames)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching frame within {timeout}s; frames: {self.frames[-10:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), timeout=remaining)
            except TimeoutError:
                pass

    async def wait_replies(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.replies()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} replies within {timeout}s, got {self.replies()}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), timeout=0.2)
            except TimeoutError:
                pass
        return self.replies()

    async def say(self, text: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send a message and return the next bot/agent reply."""
        n = len(self.replies())
        await self.send_text(text)
        return (await self.wait_replies(n + 1, timeout))[n]
