"""One Loket process: settings, database, router, pipeline, dispatcher, channels, web app, background tasks.

``role`` picks what runs: ``all`` (``loket run``), ``web`` (HTTP only: webhooks persist and ack, console,
API) or ``worker`` (router, dispatcher, scheduler).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.base import ChannelRegistry
from bot.clock import Clock
from bot.components import COMPONENTS
from bot.config import Settings
from bot.dispatcher import Dispatcher
from bot.events import EventBus
from bot.pipeline import InboxWriter, Pipeline, RouterWorker
from bot.router import Router
from bot.steps import install_core_steps
from storage.db import check_database, make_engine
from storage.schema import upgrade, upgrade_in_child

log = logging.getLogger("loket")
# How often the router and dispatcher look for work nobody told them about. Writes in this process wake them
# at once (nudges), so on SQLite (one process) the poll only catches rows written by another program (the
# ``loket`` CLI) and retries; with PostgreSQL a worker learns of a web process's messages by polling, so it
# polls more often, and runs several router loops (LOKET_ROUTER_LOOPS, of which only the first polls).
# Measured: an idle ``loket run`` on SQLite used 12.8 % of a core polling every 50 ms, 4.2 % at 250 ms (the
# rest: reminder, SLA, webhook and KB ticks).
POLL_SQLITE = 0.25
POLL_SHARED = 0.2

TaskFactory = Callable[[], Awaitable[None]]


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        role: str = "all",
        clock: Clock | None = None,
        engine: AsyncEngine | None = None,
        components: list[str] | None = None,
        long_running: bool = False,
    ) -> None:
        self.settings = settings
        self.role = role
        # a server process (loket run/web/worker) rather than a command or a test: one-off heavy work such
        # as fitting the knowledge-base index goes to child processes, so it does not stay in memory
        self.long_running = long_running
        self.clock = clock or Clock()
        self.engine = engine or make_engine(settings.database_url)
        self.router = Router()
        install_core_steps(self.router)
        self.services: dict[str, Any] = {"org_name": settings.env.get("LOKET_ORG_NAME", "Loket"),
                                         "settings": settings, "clock": self.clock}
        self.channels = ChannelRegistry()
        self.events = EventBus(settings.redis_url, prefix=settings.env.get("LOKET_REDIS_PREFIX", ""))
        self.pipeline = Pipeline(self.engine, self.clock, self.router, self.services)
        self.pipeline.reopen_window = timedelta(hours=settings.reopen_window_hours)
        self.dispatcher = Dispatcher(
            self.engine, self.clock, self.channels, self.events.publish,
            max_attempts=settings.dispatch_max_attempts,
            max_age=timedelta(seconds=settings.dispatch_max_age_seconds),
            backoff_base=settings.dispatch_backoff_base,
            backoff_cap=settings.dispatch_backoff_cap,
            lease=timedelta(seconds=float(settings.env.get("LOKET_DISPATCH_LEASE_SECONDS", "60"))),
            poll_interval=POLL_SQLITE if settings.is_sqlite else POLL_SHARED,
        )
        if self.runs_worker:
            self.pipeline.dispatcher = self.dispatcher  # routed replies go straight to this process's dispatcher
        self.worker = RouterWorker(
            self.engine, self.pipeline, self.events.publish, self.dispatcher.nudge,
            poll_interval=POLL_SQLITE if settings.is_sqlite else POLL_SHARED,
        )
        if not settings.is_sqlite:
            self.worker.loops = int(settings.env.get("LOKET_ROUTER_LOOPS", "4"))
        self.inbox = InboxWriter(self.engine, self.clock, self.worker.nudge)
        if role == "all":  # one process stores and routes: route in the transaction that stores (InboxWriter)
            self.inbox.router = self.worker
            self.worker.route_at_receive = settings.route_at_receive
        self.app = web.Application(client_max_size=32 * 1024 * 1024)
        self.app[RUNTIME] = self
        # what a worker serves on LOKET_WORKER_METRICS_PORT: /metrics, /healthz, /readyz (see add_ops_route)
        self.ops_app = web.Application()
        self.ops_app[RUNTIME] = self
        self._task_factories: list[tuple[str, set[str], TaskFactory]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._shutdown: list[Callable[[], Awaitable[None]]] = []
        if components is None and settings.env.get("LOKET_COMPONENTS"):
            components = [c.strip() for c in settings.env["LOKET_COMPONENTS"].split(",") if c.strip()]
        self.component_names = components if components is not None else list(COMPONENTS)
        for name in self.component_names:
            module = importlib.import_module(name)
            module.setup(self)

    # ------------------------------------------------------------ registration helpers for components
    def add_task(self, name: str, factory: TaskFactory, roles: set[str] | None = None) -> None:
        """A background loop that runs in processes of these roles (default: worker and all)."""
        self._task_factories.append((name, roles or {"all", "worker"}, factory))

    def add_ops_route(self, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        """A GET route for operators (health, metrics): on the main app and on a worker's own port."""
        self.app.router.add_get(path, handler)
        self.ops_app.router.add_get(path, handler)

    def stopped_loops(self) -> list[str]:
        """Background loops (router, dispatcher, scheduler …) that ended while the process runs: a crash."""
        return [t.get_name() for t in self._tasks if t.done()]

    def on_startup(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._startup.append(fn)

    def on_shutdown(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._shutdown.append(fn)

    @property
    def runs_worker(self) -> bool:
        return self.role in {"all", "worker"}

    # ------------------------------------------------------------ lifecycle
    async def prepare(self, migrate: bool = True, *, in_child: bool = False) -> None:
        """Check the database and migrate it; ``in_child``: migrate in a child process (servers: Alembic then
        never takes memory in the long-running process)."""
        await check_database(self.engine)
        if migrate and in_child:
            await upgrade_in_child(self.engine.url.render_as_string(hide_password=False))
        elif migrate:
            await upgrade(self.engine)

    async def start(self) -> None:
        await self.events.start()
        for fn in self._startup:
            await fn()
        if self.role in {"all", "web"}:
            self.inbox.start()
        if self.runs_worker:
            self._tasks.append(asyncio.create_task(self.worker.run(), name="router-worker"))
            self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="dispatcher"))
        for name, roles, factory in self._task_factories:
            if self.role in roles:
                self._tasks.append(asyncio.create_task(factory(), name=name))  # type: ignore[arg-type]

    async def stop(self) -> None:
        """Graceful: stop taking work, finish what is in hand, then close."""
        self.worker.stop()
        self.dispatcher.stop()
        for task in self._tasks:
            if task.get_name() not in {"router-worker", "dispatcher"}:
                task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        await self.inbox.stop()
        for fn in reversed(self._shutdown):
            try:
                await fn()
            except Exception:  # noqa: BLE001
                log.exception("shutdown hook failed")
        await self.events.stop()
        await self.engine.dispose()


RUNTIME: web.AppKey[Runtime] = web.AppKey("loket.runtime", Runtime)


def get_runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]
