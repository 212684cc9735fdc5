"""Test fixtures. The backend comes from the environment:

* ``DATABASE_URL`` set to PostgreSQL → each test gets a fresh database cloned from a migrated template.
* otherwise → each test gets a fresh SQLite file copied from a migrated template.
* ``REDIS_URL`` → tests that need Redis use it (with a key prefix of their own).

Under ``CI=true`` a configured service that does not answer is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.config import Settings, normalize_database_url
from storage.db import make_engine
from storage.schema import upgrade, upgrade_url
from tests.support import LoketServer, local_pg_url, pg_connect_or_fail

CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("DATABASE_URL", "")
BACKEND = "postgresql" if PG_URL.startswith(("postgres", "postgresql")) else "sqlite"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pytest_report_header(config: pytest.Config) -> str:
    return f"loket backend: {BACKEND}; redis: {os.environ.get('REDIS_URL') or 'not set'}; CI={CI}"


COUNTS = "counts"  # record_property(COUNTS, text): shown after the run even when the test passed (-q hides output)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = [f"{report.nodeid} [{report.outcome}]\n    {value}"
             for outcome in ("passed", "failed") for report in terminalreporter.stats.get(outcome, [])
             if report.when == "call" for key, value in report.user_properties if key == COUNTS]
    if lines:
        terminalreporter.section("fault and security suite counts")
        for line in lines:
            terminalreporter.write_line(line)


class DatabaseFactory:
    """Hands out fresh, migrated databases quickly (template clone / file copy)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.template: str | None = None
        self.created: list[str] = []
        self.admin_url = ""
        self._drops: queue.Queue[str | None] = queue.Queue()
        self._dropper: threading.Thread | None = None
        if BACKEND == "postgresql":
            base = normalize_database_url(PG_URL)
            self.admin_url = base
            self.prefix = f"loket_t{os.getpid()}_{uuid.uuid4().hex[:6]}"

    def _pg_url(self, dbname: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{dbname}"

    async def _admin(self, sql: str) -> None:
        engine = create_async_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    async def prepare(self) -> None:
        if BACKEND == "postgresql":
            try:
                await self._admin("SELECT 1")
            except Exception as exc:  # noqa: BLE001
                raise RuntimeError(
                    f"PostgreSQL at DATABASE_URL={PG_URL} does not answer ({exc}); start it or unset DATABASE_URL"
                ) from exc
            await self._drop_orphans()
            name = self.prefix + "_tmpl"
            await self._admin(f'CREATE DATABASE "{name}"')
            self.created.append(name)
            engine = make_engine(self._pg_url(name))
            await upgrade(engine)
            await engine.dispose()
            self.template = name
        else:
            path = self.tmp / "template.db"
            engine = make_engine(f"sqlite+aiosqlite:///{path}")
            await upgrade(engine)
            await engine.dispose()
            self.template = str(path)

    async def new(self) -> str:
        assert self.template
        if BACKEND == "postgresql":
            name = f"{self.prefix}_{uuid.uuid4().hex[:8]}"
            for attempt in range(20):
                try:
                    await self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
                    break
                except Exception:  # noqa: BLE001 - "source database is being accessed by other users"
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.1)
            self.created.append(name)
            return self._pg_url(name)
        path = self.tmp / f"{uuid.uuid4().hex[:10]}.db"
        shutil.copyfile(self.template, path)
        return f"sqlite+aiosqlite:///{path}"

    async def _drop_orphans(self) -> None:
        """Databases left by test runs that were killed (their pid is gone)."""
        engine = create_async_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                names = [r[0] for r in await conn.execute(
                    text("SELECT datname FROM pg_database WHERE datname LIKE 'loket\\_t%'"))]
        finally:
            await engine.dispose()
        for name in names:
            pid = name[len("loket_t"):].split("_", 1)[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                try:
                    await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except Exception:  # noqa: BLE001
                    pass

    def release(self, url: str) -> None:
        """Drop a test's database in the background (DROP DATABASE checkpoints: ~0.7 s each)."""
        if BACKEND != "postgresql":
            return
        if self._dropper is None:
            self._dropper = threading.Thread(target=self._drop_loop, name="db-dropper", daemon=True)
            self._dropper.start()
        self._drops.put(url.rsplit("/", 1)[1])

    def _drop_loop(self) -> None:
        async def loop() -> None:
            while True:
                name = await asyncio.to_thread(self._drops.get)
                if name is None:
                    return
                try:
                    await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    self.created.remove(name)
                except Exception:  # noqa: BLE001 - drop_all retries at the end
                    pass

        asyncio.run(loop())

    async def new_empty(self) -> str:
        """A database with no schema at all (what a fresh install starts from)."""
        if BACKEND == "postgresql":
            name = f"{self.prefix}_{uuid.uuid4().hex[:8]}"
            await self._admin(f'CREATE DATABASE "{name}"')
            self.created.append(name)
            return self._pg_url(name)
        return f"sqlite+aiosqlite:///{self.tmp / (uuid.uuid4().hex[:10] + '-empty.db')}"

    async def drop_all(self) -> None:
        if BACKEND != "postgresql":
            return
        if self._dropper is not None:
            self._drops.put(None)
            await asyncio.to_thread(self._dropper.join, 300)
        for name in reversed(list(self.created)):
            try:
                await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception:  # noqa: BLE001
                pass


_factory: DatabaseFactory | None = None


@pytest.fixture(scope="session")
def db_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    global _factory
    factory = DatabaseFactory(tmp_path_factory.mktemp("db"))
    asyncio.run(factory.prepare())
    _factory = factory
    yield factory
    asyncio.run(factory.drop_all())


@pytest.fixture
async def db_url(db_factory: DatabaseFactory) -> AsyncIterator[str]:
    url = await db_factory.new()
    yield url
    db_factory.release(url)


@pytest.fixture
async def empty_db_url(db_factory: DatabaseFactory) -> AsyncIterator[str]:
    url = await db_factory.new_empty()
    yield url
    db_factory.release(url)


@pytest.fixture
async def pg_url(db_url: str) -> AsyncIterator[str]:
    """For tests of what only PostgreSQL has (advisory locks, planner statistics): the suite's database on the
    PostgreSQL pass, on the SQLite pass a fresh migrated one on the local PostgreSQL (it must be running, as Redis)."""
    if BACKEND == "postgresql":
        yield db_url
        return
    admin_url = local_pg_url()
    name = f"loket_pg_{uuid.uuid4().hex[:8]}"
    admin = await pg_connect_or_fail(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    await upgrade_url(url)
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    if not url:
        if CI:
            pytest.fail("REDIS_URL is not set under CI=true: Redis tests must run, not skip")
        url = "redis://127.0.0.1:6379/0"
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis at {url} does not answer ({exc}); start it (see README → Development)")
    return url


def make_settings(db_url: str, tmp_path: Path, **env: str) -> Settings:
    base = {
        "DATABASE_URL": db_url,
        "LOKET_SECRET_KEY": "test-secret-key-for-loket-tests-0123456789",
        "LOKET_DATA_DIR": str(tmp_path / "data"),
        "LOKET_HOST": "127.0.0.1",
        "LOKET_PORT": "0",
        "LOKET_DEMO": "false",
        "LOKET_REDIS_PREFIX": f"t{uuid.uuid4().hex[:8]}:",
        "LOKET_DISPATCH_BACKOFF_BASE": "0.05",
        "LOKET_DISPATCH_BACKOFF_CAP": "1",
    }
    if os.environ.get("LOKET_COMPONENTS"):
        base["LOKET_COMPONENTS"] = os.environ["LOKET_COMPONENTS"]
    base.update(env)
    return Settings.from_env(base)


@pytest.fixture
def settings_factory(db_url: str, tmp_path: Path) -> Any:
    def make(**env: str) -> Settings:
        return make_settings(db_url, tmp_path, **env)

    return make


@pytest.fixture
async def loket(settings_factory: Any) -> AsyncIterator[LoketServer]:
    """A started Loket (role ``all``) serving on a free loopback port, no demo content."""
    server = LoketServer(settings_factory())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``semantic`` need torch and the real model; without them they fail with the fix (never skip)."""
    if item.get_closest_marker("semantic") is None:
        return
    try:
        import sentence_transformers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        pytest.fail("this test needs loket[semantic] (torch, sentence-transformers, MiniLM): `make test` runs it "
                    "in .venv-semantic; by hand: bash scripts/setup.sh --semantic && .venv-semantic/bin/python -m "
                    "pytest -m semantic")
