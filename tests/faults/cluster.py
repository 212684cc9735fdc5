"""The processes under test: named ``loket`` processes that can be SIGKILLed and restarted. Every start is a new
generation (``worker1.3``) whose provider API base URLs end in ``/via/<name>.<generation>``, so the fakes know
which process — and which life of it — made each send."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.processes import LoketProcess, free_port

Bases = Callable[[str], dict[str, str]]  # generation label → env (TELEGRAM_API_BASE, TWILIO_API_BASE …)


class Cluster:
    def __init__(self, tmp: Path, env: dict[str, str], bases: Bases) -> None:
        self.tmp = tmp
        self.env = env
        self.bases = bases
        self.procs: dict[str, LoketProcess] = {}
        self.generation: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        self.up: set[str] = set()  # web processes answering webhooks now
        self.kills: dict[str, float] = {}  # generation label → when it was SIGKILLed
        self.restarts = 0
        self.start_failures: list[str] = []  # starts that exited and were started again
        self.crashes: list[str] = []  # processes that died by themselves while running

    def label(self, name: str) -> str:
        return f"{name}.{self.generation[name]}"

    def add(self, name: str, role: str) -> None:
        self.ports[name] = free_port()
        self.generation[name] = 0
        self._spawn(name, role)

    def _spawn(self, name: str, role: str) -> LoketProcess:
        self.generation[name] += 1
        port_var = "LOKET_WORKER_METRICS_PORT" if role == "worker" else "LOKET_PORT"
        env = {**self.env, **self.bases(self.label(name)), port_var: str(self.ports[name])}
        proc = LoketProcess(role, env, self.tmp, self.tmp / f"{name}.log")
        self.procs[name] = proc
        proc.start()
        return proc

    def serves_webhooks(self, name: str) -> bool:
        return self.procs[name].role in {"web", "run"}

    def web_ports(self) -> list[int]:
        return [self.ports[n] for n in self.up]

    async def wait_ready(self, name: str, timeout: float = 60) -> None:
        """Ready, or started again like a process supervisor does (systemd, compose ``restart:``) when it exited
        while starting: a start can meet the chaos — its first database connection terminated (exit 2, "database
        unavailable"), or its port taken meanwhile by an outgoing connection (then it gets another port)."""
        for attempt in range(5):
            try:
                await self.procs[name].wait_ready(timeout)
                break
            except AssertionError:
                proc = self.procs[name].proc
                if attempt == 4 or proc is None or proc.poll() != 2:  # 2: the readable "cannot start" exit
                    raise
                self.start_failures.append(f"{self.label(name)} exited {proc.returncode}")
                self.ports[name] = free_port()
                self._spawn(name, self.procs[name].role)
        if self.serves_webhooks(name):
            self.up.add(name)

    async def start_all(self) -> None:
        for name in self.procs:
            await self.wait_ready(name)

    def kill(self, name: str) -> str:
        """SIGKILL the process (its whole process group); returns the generation label that died."""
        self.up.discard(name)
        label = self.label(name)
        self.procs[name].kill()
        self.kills[label] = time.monotonic()
        return label

    async def restart(self, name: str) -> None:
        self._spawn(name, self.procs[name].role)
        self.restarts += 1
        await self.wait_ready(name)

    async def revive(self) -> None:
        """Every process running again (after the chaos); one that died although nobody killed it is a crash."""
        for name, proc in list(self.procs.items()):
            if proc.proc is None or proc.proc.poll() is not None:
                if self.label(name) not in self.kills:
                    self.crashes.append(f"{self.label(name)} exited {proc.proc and proc.proc.returncode}: "
                                        f"{proc.log()[-1500:]}")
                await self.restart(name)

    def stop(self) -> None:
        self.up.clear()
        for proc in self.procs.values():
            if proc.proc and proc.proc.poll() is None:
                proc.terminate(20)
