"""``/healthz`` (the process is up) and ``/readyz`` (the database answers and the schema is current)."""

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
    return web.json_response({"status": "ready", "role": rt.role})


def setup(rt: Runtime) -> None:
    rt.app.router.add_get("/healthz", healthz)
    rt.app.router.add_get("/readyz", readyz)
