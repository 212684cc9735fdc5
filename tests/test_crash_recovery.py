"""A process killed right after persisting an inbound message answers it exactly once after restart."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

from sqlalchemy import func, select

from storage.db import make_engine
from storage.models import inbox_items, messages
from tests.processes import LOKET, ROOT, LoketProcess, free_port
from tests.support import WebChatClient


async def count(db_url: str, q: object) -> int:
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(q)).scalar_one())  # type: ignore[arg-type]
    finally:
        await engine.dispose()


async def test_sigkill_after_persist_then_restart_answers_once(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {"DATABASE_URL": db_url, "LOKET_PORT": str(port), "LOKET_DEMO": "false",
           "LOKET_DATA_DIR": str(tmp_path / "data"), "LOKET_SECRET_KEY": "k" * 40,
           "LOKET_FAULT_POINT": "after_inbox_commit"}
    first = LoketProcess("run", env, tmp_path, tmp_path / "first.log")
    first.start()
    await first.wait_ready()
    cid = uuid.uuid4().hex
    chat = WebChatClient(f"http://127.0.0.1:{port}")
    await chat.connect()
    token = chat.visitor
    await chat.send_text("halo, tolong dibantu", client_id=cid)
    # the process kills itself right after the inbox commit, before it can acknowledge or route
    assert first.wait_exit(15) == -9
    await chat.close()
    assert [f for f in chat.frames if f["type"] == "ack"] == []
    assert await count(db_url, select(func.count()).select_from(inbox_items)) == 1
    assert await count(db_url, select(func.count()).select_from(messages)) == 0

    env2 = dict(env)
    env2.pop("LOKET_FAULT_POINT")
    second = LoketProcess("run", env2, tmp_path, tmp_path / "second.log")
    second.env.pop("LOKET_FAULT_POINT", None)
    second.start()
    try:
        await second.wait_ready()
        again = WebChatClient(f"http://127.0.0.1:{port}", visitor=token)
        await again.connect()
        # the widget resends what was never acknowledged; the server must not process it twice
        await again.send_text("halo, tolong dibantu", client_id=cid)
        await again.wait_frame(lambda f: f["type"] == "ack" and f["client_id"] == cid)
        for _ in range(100):
            outs = await count(db_url, select(func.count()).select_from(messages).where(messages.c.direction == "out"))
            if outs:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        await again.close()
        assert await count(db_url, select(func.count()).select_from(messages).where(messages.c.direction == "in")) == 1
        assert await count(db_url, select(func.count()).select_from(messages).where(messages.c.direction == "out")) == 1
        assert await count(db_url, select(func.count()).select_from(inbox_items)
                           .where(inbox_items.c.status == "done")) == 1
    finally:
        assert second.terminate() == 0, second.log()


async def test_sigkill_before_route_commit_routes_once_after_restart(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {"DATABASE_URL": db_url, "LOKET_PORT": str(port), "LOKET_DEMO": "false",
           "LOKET_DATA_DIR": str(tmp_path / "data"), "LOKET_SECRET_KEY": "k" * 40,
           "LOKET_FAULT_POINT": "before_route_commit"}
    first = LoketProcess("run", env, tmp_path, tmp_path / "first.log")
    first.start()
    await first.wait_ready()
    chat = WebChatClient(f"http://127.0.0.1:{port}")
    await chat.connect()
    await chat.send_text("pesanan saya belum datang")
    assert first.wait_exit(15) == -9
    await chat.close()
    env2 = {k: v for k, v in env.items() if k != "LOKET_FAULT_POINT"}
    second = LoketProcess("run", env2, tmp_path, tmp_path / "second.log")
    second.env.pop("LOKET_FAULT_POINT", None)
    second.start()
    try:
        await second.wait_ready()
        for _ in range(100):
            if await count(db_url, select(func.count()).select_from(messages).where(messages.c.direction == "out")):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert await count(db_url, select(func.count()).select_from(messages).where(messages.c.direction == "out")) == 1
        assert await count(db_url, select(func.count()).select_from(messages).where(messages.c.direction == "in")) == 1
    finally:
        assert second.terminate() == 0, second.log()


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




async def test_send_claimed_by_a_crashed_process_goes_out_promptly_after_restart(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {"DATABASE_URL": db_url, "LOKET_PORT": str(port), "LOKET_DEMO": "false",
           "LOKET_DATA_DIR": str(tmp_path / "data"), "LOKET_SECRET_KEY": "k" * 40,
           "LOKET_FAULT_POINT": "before_send"}
    first = LoketProcess("run", env, tmp_path, tmp_path / "first.log")
    first.start()
    await first.wait_ready()
    chat = WebChatClient(f"http://127.0.0.1:{port}")
    await chat.connect()
    token = chat.visitor
    await chat.send_text("halo")
    assert first.wait_exit(15) == -9  # killed with the reply claimed ("sending") but not sent
    await chat.close()
    env2 = {k: v for k, v in env.items() if k != "LOKET_FAULT_POINT"}
    second = LoketProcess("run", env2, tmp_path, tmp_path / "second.log")
    second.env.pop("LOKET_FAULT_POINT", None)
    second.start()
    try:
        await second.wait_ready()
        again = WebChatClient(f"http://127.0.0.1:{port}", visitor=token)
        await again.connect()
        # the lease is 60 s; the restarted dispatcher takes the dead process's claim back at once
        for _ in range(100):
            sent = await count(db_url, select(func.count()).select_from(messages)
                               .where(messages.c.direction == "out", messages.c.status.in_(("sent", "delivered"))))
            if sent:
                break
            await asyncio.sleep(0.1)
        await again.close()
        assert sent == 1
        assert await count(db_url, select(func.count()).select_from(messages).where(messages.c.direction == "out")) == 1
    finally:
        assert second.terminate() == 0, second.log()
