"""``loket tokens``: create, list and revoke scoped API tokens."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from bot.api.auth import SCOPES, InvalidScope, create_token, revoke_token
from bot.api.models import api_tokens
from bot.clock import Clock
from storage.db import check_database, make_engine

app = typer.Typer(help="Scoped API tokens for /api/v1 (hashed at rest; the secret is shown once).",
                  no_args_is_help=True)
console = Console()


def _run(fn: Any) -> Any:
    from bot.cli import run_async, settings_or_exit

    settings = settings_or_exit()

    async def go() -> Any:
        engine = make_engine(settings.database_url)
        try:
            await check_database(engine)
            return await fn(engine)
        finally:
            await engine.dispose()

    return run_async(go())


@app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="Who or what uses the token, e.g. 'crm-sync'."),
    scopes: str = typer.Option(..., "--scopes", help="Comma-separated: " + ", ".join(SCOPES)),
) -> None:
    """Create a token and print it once (store it now: only its hash is kept)."""
    wanted = [s for s in scopes.split(",") if s.strip()]

    async def go(engine: Any) -> tuple[int, str]:
        async with engine.begin() as conn:
            return await create_token(conn, name, wanted, Clock().now(), created_by="cli")

    try:
        token_id, plain = _run(go)
    except InvalidScope as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"token {token_id} '{name}' created with scopes {', '.join(sorted(set(wanted)))}")
    print(plain)


@app.command("list")
def list_() -> None:
    """List tokens (prefix, scopes, last use, revoked) — never their secrets."""

    async def go(engine: Any) -> list[Any]:
        async with engine.connect() as conn:
            return list((await conn.execute(select(api_tokens).order_by(api_tokens.c.id))).mappings().all())

    rows = _run(go)
    table = Table(title=f"API tokens ({len(rows)})")
    for col in ("id", "name", "prefix", "scopes", "created", "last used", "revoked"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["name"], r["prefix"], ",".join(r["scopes"] or []), str(r["created_at"])[:19],
                      str(r["last_used_at"] or "")[:19], str(r["revoked_at"] or "")[:19])
    console.print(table)


@app.command("revoke")
def revoke(token_id: int = typer.Argument(..., help="Token id (see `loket tokens list`).")) -> None:
    """Revoke a token; requests with it get 401 from now on."""

    async def go(engine: Any) -> bool:
        async with engine.begin() as conn:
            return await revoke_token(conn, token_id, Clock().now())

    if not _run(go):
        console.print(f"[red]no active token with id {token_id}[/red]")
        raise typer.Exit(1)
    console.print(f"token {token_id} revoked")
