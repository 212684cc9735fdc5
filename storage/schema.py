"""Schema management: every feature's models on one metadata, and ``loket db upgrade`` through Alembic.

Each feature keeps its tables in its own module and its own migration branch that starts from the core
revision; ``upgrade`` goes to all heads, so features land without touching each other's migrations.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.child_process import run_module
from storage.models import Base

if TYPE_CHECKING:
    from alembic.config import Config

# the child's exit status when it could not reach the database (the parent tries again, then exits 2)
UNAVAILABLE_EXIT = 3

# Modules that define tables on ``Base``. A feature adds its module here.
MODEL_MODULES: list[str] = [
    "storage.models",
    "knowledge_base.models",
    "bot.flows.models",
    "bot.appointments.models",
    "bot.channels.email_models",
    "bot.api.models",
    "agent_console.models",
]


def load_all_models() -> MetaData:
    for name in MODEL_MODULES:
        importlib.import_module(name)
    return Base.metadata


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _upgrade_sync(connection: object, url: str) -> None:
    from alembic import command

    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "heads")


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema (all feature heads)."""
    url = engine.url.render_as_string(hide_password=False)
    async with engine.connect() as conn:
        await conn.run_sync(_upgrade_sync, url)
        await conn.commit()


async def upgrade_url(url: str) -> None:
    """``upgrade`` the database at ``url`` with an engine of its own."""
    from storage.db import make_engine

    engine = make_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


class SchemaUpgradeFailed(RuntimeError):
    """The migration child failed for a reason other than the database being out of reach."""


async def upgrade_in_child(url: str) -> None:
    """``upgrade`` in a short-lived child process, so a long-running server never imports Alembic and its
    templates (~17 MB of a process's memory for a step that runs once). Raises ``DatabaseUnavailable`` when
    the child could not reach the database, ``SchemaUpgradeFailed`` (with the child's last line) otherwise."""
    from storage.db import DatabaseUnavailable

    child = await run_module("storage.schema", url.encode(), keep_output=False)  # stdin: no password in `ps`
    if child.returncode == 0:
        return
    last = child.last_error
    if child.returncode == UNAVAILABLE_EXIT:
        raise DatabaseUnavailable(last)
    raise SchemaUpgradeFailed(f"migrating the database failed: {last}")


def _child() -> int:
    from sqlalchemy.exc import DBAPIError

    from storage.db import DatabaseUnavailable

    url = sys.stdin.read().strip()
    try:
        asyncio.run(upgrade_url(url))
    except (DBAPIError, OSError, DatabaseUnavailable) as exc:
        text = str(exc).strip().splitlines()
        print(text[0] if text else type(exc).__name__, file=sys.stderr)
        return UNAVAILABLE_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(_child())
