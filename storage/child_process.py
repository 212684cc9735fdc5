"""One step in a short-lived child of this interpreter, so a long-running server keeps none of its imports.

Used for work that runs rarely but loads heavy libraries a process never gives back: migrations (Alembic) and
fitting the knowledge-base index (scikit-learn, scipy, bm25s). The child is ``python -m MODULE`` started from
the project root; the payload goes in on stdin (so nothing shows in the process list), the result comes back
on stdout, and a failure is reported by the child's last line on stderr.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ChildResult:
    returncode: int
    output: bytes
    last_error: str  # the child's last non-empty stderr line, or "exit status N"


async def run_module(module: str, payload: bytes, keep_output: bool = True) -> ChildResult:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE if keep_output else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, cwd=str(ROOT))
    out, err = await proc.communicate(payload)
    code = proc.returncode if proc.returncode is not None else -1
    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    return ChildResult(code, out or b"", lines[-1].strip() if lines else f"exit status {code}")
