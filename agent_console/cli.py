"""``loket agents create``: add a console user (argon2 hash; optional TOTP seed printed once)."""

from __future__ import annotations

import asyncio

import pyotp
import typer
from sqlalchemy import insert, select

from agent_console.auth import ROLES, hash_password
from bot.clock import Clock
from bot.config import Settings
from storage.db import make_engine
from storage.models import agents, team_members, teams

app = typer.Typer(help="Agent console users.", no_args_is_help=True)


@app.command("create")
def create(
    email: str = typer.Option(..., help="Sign-in email"),
    name: str = typer.Option(..., help="Display name"),
    role: str = typer.Option("agent", help="agent | supervisor | admin"),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
    max_chats: int = typer.Option(5, help="Concurrent conversations for auto-assignment"),
    team: str | None = typer.Option(None, help="Team name to join (created if missing)"),
    totp: bool = typer.Option(False, help="Enable TOTP two-factor; prints the provisioning URI once"),
    language: str = typer.Option("id", help="UI language: id | en"),
) -> None:
    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {', '.join(ROLES)}")
    if len(password) < 10:
        raise typer.BadParameter("use at least 10 characters")
    secret = pyotp.random_base32() if totp else None

    async def go() -> int:
        engine = make_engine(Settings.from_env().database_url)
        now = Clock().now()
        try:
            async with engine.begin() as conn:
                aid = (await conn.execute(insert(agents).values(
                    email=email.strip().lower(), name=name, password_hash=hash_password(password), role=role,
                    max_chats=max_chats, presence="offline", totp_secret=secret, language=language, active=True,
                    created_at=now).returning(agents.c.id))).scalar_one()
                if team:
                    tid = (await conn.execute(select(teams.c.id).where(teams.c.name == team))).scalar_one_or_none()
                    if tid is None:
                        tid = (await conn.execute(insert(teams).values(name=team, business_hours={}, settings={},
                                                                       created_at=now).returning(teams.c.id))
                               ).scalar_one()
                    await conn.execute(insert(team_members).values(team_id=tid, agent_id=aid))
                return int(aid)
        finally:
            await engine.dispose()

    aid = asyncio.run(go())
    typer.echo(f"agent {aid} created: {email} ({role})")
    if secret:
        typer.echo("TOTP: " + pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name="Loket"))
