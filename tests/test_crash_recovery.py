"""Crash recovery: a process killed at a fault point loses nothing and answers exactly once after restart."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from storage.models import inbox_items, messages
from tests.processes import LOKET, ROOT, LoketProcess, free_port
from tests.processes import count_rows as count
from tests.support import WebChatClient


def outbound(*statuses: str) -> object:
    q = select(func.count()).select_from(messages).where(messages.c.direction == "out")
    return q.where(messages.c.status.in_(statuses)) if statuses else q


INBOUND = select(func.count()).select_from(messages).where(messages.c.direction == "in")


@dataclass
class Crash:
    port: int
    visitor: str
    client_id: str
    frames: list[dict[str, object]]
    env: dict[str, str]


async def crash_at(fault: str, db_url: str, tmp_path: Path, text: str, **extra: str) -> Crash:
    """Start ``loket run`` with a fault point, send one web chat message, and see the process SIGKILL itself."""
    port = free_port()
    env = {"DATABASE_URL": db_url, "LOKET_PORT": str(port), "LOKET_DEMO": "false",
           "LOKET_DATA_DIR": str(tmp_path / "data"), "LOKET_SECRET_KEY": "k" * 40, **extra}
    first = LoketProcess("run", {**env, "LOKET_FAULT_POINT": fault}, tmp_path, tmp_path / "first.log")
    first.start()
    await first.wait_ready()
    cid = uuid.uuid4().hex
    chat = WebChatClient(f"http://127.0.0.1:{port}")
    await chat.connect()
    await chat.send_text(text, client_id=cid)
    assert first.wait_exit(15) == -9, first.log()
    await chat.close()
    return Crash(port, chat.visitor or "", cid, chat.frames, env)


async def restarted(crash: Crash, tmp_path: Path, check: Callable[[], Awaitable[None]]) -> None:
    """Start the process again without the fault point, run ``check``, and stop it gracefully."""
    second = LoketProcess("run", crash.env, tmp_path, tmp_path / "second.log")
    second.env.pop("LOKET_FAULT_POINT", None)
    second.start()
    try:
        await second.wait_ready()
        await check()
    finally:
        assert second.terminate() == 0, second.log()


async def wait_count(db_url: str, q: object, at_least: int = 1, tries: int = 100) -> int:
    n = 0
    for _ in range(tries):
        n = await count(db_url, q)
        if n >= at_least:
            break
        await asyncio.sleep(0.1)
    return n


async def resend_and_check_answered_once(crash: Crash, db_url: str, text: str) -> None:
    async with WebChatClient(f"http://127.0.0.1:{crash.port}", visitor=crash.visitor) as again:
        # the widget resends what was never acknowledged; the server must not process it twice
        await again.send_text(text, client_id=crash.client_id)
        await again.wait_frame(lambda f: f["type"] == "ack" and f["client_id"] == crash.client_id)
        await wait_count(db_url, outbound("sent", "delivered"))
        await asyncio.sleep(1.0)
    assert await count(db_url, INBOUND) == 1
    assert await count(db_url, outbound()) == 1
    assert await count(db_url, outbound("sent", "delivered")) == 1
    assert await count(db_url, select(func.count()).select_from(inbox_items)
                       .where(inbox_items.c.status == "done")) == 1


async def test_sigkill_after_persist_then_restart_answers_once(db_url: str, tmp_path: Path) -> None:
    # one process (loket run) routes a message in the transaction that stores it
    crash = await crash_at("after_inbox_commit", db_url, tmp_path, "halo, tolong dibantu")
    # killed right after that commit, before it could acknowledge or send the reply
    assert [f for f in crash.frames if f["type"] == "ack"] == []
    assert await count(db_url, select(func.count()).select_from(inbox_items)) == 1
    assert await count(db_url, INBOUND) == 1
    assert await count(db_url, outbound("queued")) == 1  # claimed for the dead process's dispatcher

    async def check() -> None:
        await resend_and_check_answered_once(crash, db_url, "halo, tolong dibantu")

    await restarted(crash, tmp_path, check)


async def test_sigkill_after_persist_before_the_router_answers_once(db_url: str, tmp_path: Path) -> None:
    # stored only; the router worker routes it (as when web and worker are separate processes)
    crash = await crash_at("after_inbox_commit", db_url, tmp_path, "halo, tolong dibantu",
                           LOKET_ROUTE_AT_RECEIVE="false")
    assert [f for f in crash.frames if f["type"] == "ack"] == []
    assert await count(db_url, select(func.count()).select_from(inbox_items)) == 1
    assert await count(db_url, select(func.count()).select_from(messages)) == 0

    async def check() -> None:
        await resend_and_check_answered_once(crash, db_url, "halo, tolong dibantu")

    await restarted(crash, tmp_path, check)


async def test_sigkill_before_the_storing_commit_loses_nothing_the_client_resends(db_url: str,
                                                                                  tmp_path: Path) -> None:
    # killed inside the transaction that stores and routes: nothing is stored and nothing was acknowledged
    crash = await crash_at("before_route_commit", db_url, tmp_path, "pesanan saya belum datang")
    assert [f for f in crash.frames if f["type"] == "ack"] == []
    assert await count(db_url, select(func.count()).select_from(inbox_items)) == 0

    async def check() -> None:
        await resend_and_check_answered_once(crash, db_url, "pesanan saya belum datang")

    await restarted(crash, tmp_path, check)


async def test_sigkill_before_route_commit_routes_once_after_restart(db_url: str, tmp_path: Path) -> None:
    # the router worker's transaction dies: the stored message is routed once by the next process
    crash = await crash_at("before_route_commit", db_url, tmp_path, "pesanan saya belum datang",
                           LOKET_ROUTE_AT_RECEIVE="false")

    async def check() -> None:
        await wait_count(db_url, outbound())
        await asyncio.sleep(0.5)
        assert await count(db_url, outbound()) == 1
        assert await count(db_url, INBOUND) == 1

    await restarted(crash, tmp_path, check)


async def test_send_claimed_by_a_crashed_process_goes_out_promptly_after_restart(db_url: str, tmp_path: Path) -> None:
    # killed with the reply claimed ("sending") but not sent
    crash = await crash_at("before_send", db_url, tmp_path, "halo")

    async def check() -> None:
        # the lease is 60 s; the restarted dispatcher takes the dead process's claim back at once
        assert await wait_count(db_url, outbound("sent", "delivered")) == 1
        assert await count(db_url, outbound()) == 1

    await restarted(crash, tmp_path, check)


def test_unreachable_database_gives_one_readable_line(tmp_path: Path) -> None:
    port = free_port()
    dead = free_port()
    env = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead}/nope", "LOKET_PORT": str(port),
           "LOKET_DATA_DIR": str(tmp_path / "data"), "LOKET_SECRET_KEY": "k" * 40, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([*LOKET, "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "cannot open the database" in lines[0] and "DATABASE_URL" in lines[0]
    assert "Traceback" not in proc.stderr


def test_unsupported_database_url_is_a_config_error(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "mysql://root@127.0.0.1/x", "LOKET_DATA_DIR": str(tmp_path / "d"),
           "LOKET_SECRET_KEY": "k" * 40, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([*LOKET, "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "DATABASE_URL" in proc.stderr and "postgresql://" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_db_upgrade_command_creates_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    env = {"DATABASE_URL": f"sqlite:///{db}", "LOKET_DATA_DIR": str(tmp_path / "d"), "LOKET_SECRET_KEY": "k" * 40,
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([*LOKET, "db", "upgrade"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout
    import sqlite3

    names = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")}
    assert {"customers", "identities", "conversations", "messages", "touchpoints", "inbox_items",
            "outbox_items", "alembic_version"} <= names
    again = subprocess.run([*LOKET, "db", "upgrade"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
