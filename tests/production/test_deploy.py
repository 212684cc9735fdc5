"""docker-compose.yml / Dockerfile / .env.example match the CLI, and SIGTERM stops a real process gracefully."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from sqlalchemy import func, select
from typer.main import get_command

from bot.cli import app
from bot.config import Settings
from storage.models import inbox_items, messages
from tests.conftest import BACKEND
from tests.processes import LoketProcess, count_rows, free_port
from tests.support import WebChatClient

ROOT = Path(__file__).resolve().parents[2]


def cli_paths() -> set[tuple[str, ...]]:
    root = get_command(app)
    out: set[tuple[str, ...]] = set()

    def walk(cmd: object, prefix: tuple[str, ...]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            out.add((*prefix, name))
            walk(sub, (*prefix, name))

    walk(root, ())
    return out


def test_compose_services_and_commands_match_the_cli() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker"}
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    commands = cli_paths()
    for name, expected in (("migrate", ("db", "upgrade")), ("web", ("web",)), ("worker", ("worker",))):
        svc = services[name]
        assert tuple(svc["command"]) == expected
        assert expected in commands, f"`loket {' '.join(expected)}` is not a CLI command"
        assert svc["env_file"] == ".env"
        assert svc["environment"]["DATABASE_URL"].startswith("postgresql://")
        assert svc["environment"]["REDIS_URL"].startswith("redis://")
        assert "loket-data:/var/lib/loket" in svc["volumes"]
    for name in ("postgres", "redis", "web", "worker"):
        assert "test" in services[name]["healthcheck"], name
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert set(doc["volumes"]) == {"pg-data", "redis-data", "loket-data"}
    assert any("/readyz" in part for part in services["web"]["healthcheck"]["test"])
    # a worker serves /metrics, /healthz, /readyz on its own port: Prometheus scrapes it, compose health-checks it
    port = services["worker"]["environment"]["LOKET_WORKER_METRICS_PORT"]
    assert int(port) == Settings().worker_metrics_port
    assert port in services["worker"]["expose"]
    assert any(f"127.0.0.1:{port}/readyz" in part for part in services["worker"]["healthcheck"]["test"])
    assert "LOKET_WORKER_METRICS_PORT" not in services["web"]["environment"]


def test_dockerfile_and_env_example() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.splitlines()[1].startswith("FROM python:3.11-slim")
    assert "pip install -r requirements.lock" in text
    assert re.search(r"^USER loket$", text, re.M)
    assert 'ENTRYPOINT ["loket"]' in text
    assert re.search(r"^EXPOSE 8080 9108$", text, re.M)  # the web port and a worker's metrics port
    assert "LOKET_WORKER_METRICS_PORT=9108" in text
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    assert "LOKET_SECRET_KEY" in env and "TELEGRAM_BOT_TOKEN" in env and "TWILIO_AUTH_TOKEN" in env
    # the example parses as settings
    Settings.from_env({**env, "DATABASE_URL": "sqlite+aiosqlite:///x.db", "LOKET_DATA_DIR": "/tmp"}, dotenv=False)


async def test_sigterm_stops_taking_work_finishes_and_exits(db_url: str, tmp_path: Path) -> None:
    """SIGTERM mid-load: exit code 0, nothing half-done; a restarted process answers the rest exactly once."""
    env = {"DATABASE_URL": db_url, "LOKET_DEMO": "false", "LOKET_DATA_DIR": str(tmp_path / "data"),
           "LOKET_SECRET_KEY": "k" * 40, "PYTHONPATH": str(ROOT)}
    if BACKEND == "postgresql":
        env["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        env["LOKET_REDIS_PREFIX"] = f"sig{os.getpid()}:"
    web_port = free_port()
    roles = ("web", "worker") if BACKEND == "postgresql" else ("run",)
    procs = {}
    for role in roles:
        port = web_port if role in {"web", "run"} else free_port()
        procs[role] = LoketProcess(role, {**env, "LOKET_PORT": str(port)}, tmp_path, tmp_path / f"{role}.log")
        procs[role].start()
    front = procs.get("web") or procs["run"]
    await front.wait_ready()
    if "worker" in procs:
        await asyncio.sleep(1.0)
    clients = [WebChatClient(f"http://127.0.0.1:{web_port}") for _ in range(10)]
    for c in clients:
        await c.connect()
    for i in range(3):
        for n, c in enumerate(clients):
            await c.send_text(f"pesan {i} dari {n}")
    acks = 0
    for c in clients:
        await c.wait_frame(lambda f: f["type"] == "ack" and f["client_id"], timeout=20)
    target = procs.get("worker") or procs["run"]
    assert target.proc is not None
    started = time.monotonic()
    target.proc.send_signal(signal.SIGTERM)
    code = target.wait_exit(30)
    took = time.monotonic() - started
    assert code == 0, target.log()
    assert took < 15
    full_log = target.log_path.read_text(errors="replace")
    assert "shutting down" in full_log and "stopped cleanly" in full_log
    for c in clients:
        acks += len([f for f in c.frames if f["type"] == "ack"])
        await c.close()
    # restart what was stopped; every acknowledged message is answered, none twice
    again = LoketProcess(target.role, target.env, tmp_path, tmp_path / f"{target.role}-2.log")
    again.start()
    try:
        if again.role == "run":
            await again.wait_ready()
        stored = await count_rows(db_url, select(func.count()).select_from(inbox_items))
        assert stored >= acks
        for _ in range(300):
            done = await count_rows(db_url, select(func.count()).select_from(inbox_items)
                                    .where(inbox_items.c.status == "done"))
            if done == stored:
                break
            await asyncio.sleep(0.1)
        assert done == stored
        assert await count_rows(db_url, select(func.count()).select_from(messages)
                                .where(messages.c.direction == "in")) == stored
    finally:
        assert again.terminate() == 0, again.log()
        for p in procs.values():
            if p.proc and p.proc.poll() is None:
                assert p.terminate() == 0, p.log()


def test_worker_sigterm_exit_code_via_cli_entrypoint(tmp_path: Path) -> None:
    """`loket --help` lists the production commands the compose file uses."""
    out = subprocess.run([sys.executable, "-m", "bot.cli", "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0
    for word in ("web", "worker", "db", "tokens"):
        assert re.search(rf"\b{word}\b", out.stdout), word
