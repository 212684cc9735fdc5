"""Schema management: every feature's models on one metadata, and ``loket db upgrade`` through Alembic.

Each feature keeps its tables in its own module and its own migration branch that starts from the core
revision; ``upgrade`` goes to all heads, so features land without touching each other's migrations.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.models import Base

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
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _upgrade_sync(connection: object, url: str) -> None:
    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "heads")


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema (all feature heads)."""
    url = engine.url.render_as_string(hide_password=False)
    async with engine.connect() as conn:
        await conn.run_sync(_upgrade_sync, url)
        await conn.commit()
