"""Fault points for crash tests: ``LOKET_FAULT_POINT=name`` makes the process SIGKILL itself at that point."""

from __future__ import annotations

import os
import signal

_active: str | None = os.environ.get("LOKET_FAULT_POINT") or None


def set_fault_point(name: str | None) -> None:
    global _active
    _active = name


def fault(name: str) -> None:
    if _active == name:
        os.kill(os.getpid(), signal.SIGKILL)
