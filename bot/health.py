"""``/healthz`` (the process is up) and ``/readyz`` (the database answers and no background loop has died).

Every process serves them: ``loket web`` and ``loket run`` on ``LOKET_PORT``, ``loket worker`` on
``LOKET_WORKER_METRICS_PORT``.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import text

from bot.runtime import Runtime, get_runtime


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rt = get_runtime(request)
    try:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        return web.json_response({"status": "unavailable", "database": str(exc)[:200]}, status=503)
    stopped = rt.stopped_loops()
    if stopped:
        return web.json_response({"status": "unavailable", "stopped": stopped,
                                  "hint": "a background loop ended; see the log and restart the process"},
                                 status=503)
    return web.json_response({"status": "ready", "role": rt.role})


def setup(rt: Runtime) -> None:
    rt.add_ops_route("/healthz", healthz)
    rt.add_ops_route("/readyz", readyz)
