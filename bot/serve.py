"""Run a Runtime as a server process until SIGINT/SIGTERM (graceful: stop taking work, finish, exit)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from aiohttp import web
from sqlalchemy.exc import DBAPIError

from bot.config import ConfigError, Settings
from bot.runtime import Runtime
from storage.db import DatabaseUnavailable, check_database, make_engine
from storage.schema import SchemaUpgradeFailed

log = logging.getLogger("loket")


def configure_logging(level: str) -> None:
    from bot.logs import configure

    configure(level)


async def serve(settings: Settings, role: str, ready: asyncio.Event | None = None) -> None:
    engine = make_engine(settings.database_url)
    await check_database(engine)  # first, so a wrong DATABASE_URL is one readable line and nothing else
    rt = Runtime(settings, role=role, engine=engine, long_running=True)
    await prepare_riding_out_drops(rt)
    await rt.start()
    # Everything loaded at start-up (libraries, models, templates, the knowledge-base index) lives as long as
    # the process: keep it out of the cyclic garbage collector's scans, which otherwise walk those objects
    # on every full collection (tens of milliseconds each, paid by whichever message is in flight).
    gc.collect()
    gc.freeze()
    # Routing a message allocates a few hundred short-lived containers, nearly all freed by reference counting;
    # the default young-generation threshold (700) still ran a collection every few messages. 20,000 keeps the
    # cyclic garbage that can pile up to a few MB and took 5-11 % off the CPU per message on SQLite
    # (BENCHMARKS.md §1, 2026-12-06).
    gc.set_threshold(20_000, 20, 50)
    runner: web.AppRunner | None = None
    if role in {"all", "web"}:
        grace = float(settings.env.get("LOKET_SHUTDOWN_GRACE", "10"))
        runner = web.AppRunner(rt.app, access_log=None, handle_signals=False, shutdown_timeout=grace)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
        log.info("Loket %s listening on http://%s:%s (public URL %s)", role, settings.host, settings.port,
                 settings.public_url)
    elif settings.worker_metrics_port is not None:
        runner = await serve_ops(rt, settings.host, settings.worker_metrics_port)
    else:
        log.info("Loket worker started (router, dispatcher, scheduler); no metrics port "
                 "(LOKET_WORKER_METRICS_PORT=off)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down: finishing work in hand")
    if runner is not None:
        # Stop listening, close WebSockets (app.on_shutdown), let requests in progress finish (their inbox writes
        # still commit), then stop the runtime's loops.
        await runner.cleanup()
    await rt.stop()
    log.info("stopped cleanly")


async def prepare_riding_out_drops(rt: Runtime, attempts: int = 5) -> None:
    """Migrate and check the schema. The database answered a moment ago (``check_database``), so a connection
    lost meanwhile (a failover, a restart, an operator terminating sessions) is tried again rather than ending
    the process with a traceback; migrations run in a transaction, so a retry starts clean."""
    for attempt in range(1, attempts + 1):
        try:
            await rt.prepare(migrate=True, in_child=True)
            return
        except (DBAPIError, OSError, DatabaseUnavailable) as exc:
            if attempt == attempts:
                raise DatabaseUnavailable(
                    f"the database connection kept dropping while the schema was checked ({attempt} tries): "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                ) from exc
            log.warning("database connection lost while starting (%s); trying again", type(exc).__name__)
            await asyncio.sleep(0.5 * attempt)


async def serve_ops(rt: Runtime, host: str, port: int) -> web.AppRunner:
    """A worker's own small HTTP server: /metrics, /healthz, /readyz and nothing else."""
    runner = web.AppRunner(rt.ops_app, access_log=None, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        await rt.stop()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("Loket worker started (router, dispatcher, scheduler); /metrics, /healthz, /readyz on http://%s:%s",
             host, bound)
    return runner


def run_process(role: str) -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"loket: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        asyncio.run(serve(settings, role))
    except (DatabaseUnavailable, SchemaUpgradeFailed) as exc:
        print(f"loket: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    except OSError as exc:
        if exc.errno == 98:
            name, port = ("LOKET_WORKER_METRICS_PORT", settings.worker_metrics_port) if role == "worker" \
                else ("LOKET_PORT", settings.port)
            print(
                f"loket: port {port} on {settings.host} is already in use; "
                f"stop the other process or set {name} to a free port"
                + (" (or off: no metrics and health checks for this worker)" if role == "worker" else ""),
                file=sys.stderr,
            )
            raise SystemExit(2) from exc
        raise
