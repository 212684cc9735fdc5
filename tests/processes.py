"""Run real ``loket`` processes for crash and fault tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
LOKET = [sys.executable, "-m", "bot.cli"]
WORKER_PORT = "LOKET_WORKER_METRICS_PORT"


async def count_rows(db_url: str, query: object) -> int:
    """The single number a count query gives, read on a connection of its own (the server under test is
    another process)."""
    from storage.db import make_engine

    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())  # type: ignore[arg-type]
    finally:
        await engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoketProcess:
    def __init__(self, role: str, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.role = role
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "LOKET_LOG_FORMAT": "plain"}
        if role == "worker" and not env.get(WORKER_PORT):
            self.env[WORKER_PORT] = str(free_port())  # never the default: other test runs share this host
        self.cwd = cwd
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """Where /healthz, /readyz and /metrics answer (a worker serves only those, on its own port)."""
        return int(self.env[WORKER_PORT if self.role == "worker" else "LOKET_PORT"])

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*LOKET, self.role], env=self.env, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"loket {self.role} exited {self.proc.returncode}:\n{self.log()}")
                try:
                    async with s.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"loket {self.role} not ready in {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return int(self.proc.wait(timeout))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""
