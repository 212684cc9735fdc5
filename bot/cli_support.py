"""What every ``loket`` command needs: settings or a readable exit, and async work with readable DB errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import ConfigError, Settings
from storage.db import DatabaseUnavailable, make_engine

console = Console()
T = TypeVar("T")


def settings_or_exit() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def run_async(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except DatabaseUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


async def with_engine(settings: Settings, fn: Callable[[AsyncEngine], Awaitable[Any]]) -> Any:
    engine = make_engine(settings.database_url)
    try:
        return await fn(engine)
    finally:
        await engine.dispose()
