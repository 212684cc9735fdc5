"""``loket email …``: check the IMAP/SMTP settings, see the sync state and mail that failed to import, retry it."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select, update

from bot.channels.email_models import email_mailbox_state, email_messages
from bot.cli_support import settings_or_exit, with_engine

app = typer.Typer(help="Email channel: settings check, sync status, failed imports.", no_args_is_help=True)
console = Console()


_settings = settings_or_exit
_with_engine = with_engine


@app.command()
def status() -> None:
    """Mailboxes (UIDVALIDITY, last UID), mail counts by status, and mail waiting for a retry or given up."""

    async def go(engine: Any) -> None:
        async with engine.connect() as conn:
            boxes = (await conn.execute(select(email_mailbox_state).order_by(email_mailbox_state.c.id))).mappings().all()
            counts = (await conn.execute(select(email_messages.c.direction, email_messages.c.status, func.count())
                                         .group_by(email_messages.c.direction, email_messages.c.status))).all()
            bad = (await conn.execute(select(email_messages).where(
                email_messages.c.status.in_(("retry", "failed"))).order_by(email_messages.c.id))).mappings().all()
        table = Table("account", "mailbox", "uidvalidity", "last uid", "updated")
        for b in boxes:
            table.add_row(b["account"], b["mailbox"], str(b["uidvalidity"]), str(b["last_uid"]), str(b["updated_at"]))
        console.print(table if boxes else "no mailbox synced yet (is IMAP_HOST set and a worker running?)")
        for direction, st, n in counts:
            console.print(f"{direction:>3} {st:<12} {n}")
        if bad:
            console.print("[yellow]mail that failed to import[/yellow] (failed = given up, moved to the failed folder):")
            for r in bad:
                console.print(f"#{r['id']} {r['status']} {r['mailbox']} UID {r['uid']} attempts {r['attempts']} "
                              f"{r['message_id']}\n    {(r['last_error'] or '')[:300]}", soft_wrap=True)

    asyncio.run(_with_engine(_settings(), go))


@app.command()
def retry(message_id: str = typer.Argument(..., help="the Message-ID (with <>) or the row id from `status`")) -> None:
    """Import a given-up mail again: run this, then move the mail from Loket/Failed back to the inbox."""

    async def go(engine: Any) -> int:
        cond = email_messages.c.message_id == message_id
        if message_id.isdigit():
            cond = email_messages.c.id == int(message_id)
        async with engine.begin() as conn:
            res = await conn.execute(update(email_messages).where(
                cond, email_messages.c.direction == "in", email_messages.c.status.in_(("failed", "retry")),
            ).values(status="retry", attempts=0))
            return int(res.rowcount or 0)

    n = asyncio.run(_with_engine(_settings(), go))
    if not n:
        console.print(f"[red]no failed mail {message_id!r}[/red]; see `loket email status`")
        raise typer.Exit(1)
    console.print("reset; move the mail from the failed folder back to the inbox and Loket imports it again")


@app.command()
def check() -> None:
    """Log in to the IMAP and SMTP servers with the configured settings and report what they offer."""
    settings = _settings()

    async def go() -> int:
        problems = 0
        if settings.imap.get("host"):
            from aioimaplib import aioimaplib

            from bot.channels.email import imap_config

            try:
                cfg = imap_config(settings.imap)
                import ssl

                client = aioimaplib.IMAP4(host=cfg.host, port=cfg.port, timeout=cfg.timeout,
                                          ssl_context=ssl.create_default_context() if cfg.use_ssl else None)
                await client.wait_hello_from_server()
                res = await client.login(cfg.user, cfg.password)
                if res.result != "OK":
                    raise RuntimeError(f"login refused: {res.lines}")
                console.print(f"IMAP {cfg.host}:{cfg.port} login OK; IDLE: "
                              f"{'yes' if client.has_capability('IDLE') else 'no (polling)'}; "
                              f"MOVE: {'yes' if client.has_capability('MOVE') else 'no'}")
                for mailbox in cfg.mailboxes:
                    sel = await client.select(mailbox)
                    console.print(f"  mailbox {mailbox}: {'OK' if sel.result == 'OK' else 'MISSING'}")
                    problems += sel.result != "OK"
                await client.logout()
            except Exception as exc:  # noqa: BLE001 - report any failure readably
                console.print(f"[red]IMAP: {type(exc).__name__}: {exc}[/red]")
                problems += 1
        else:
            console.print("IMAP_HOST is not set: no inbound mail")
        if settings.smtp.get("host"):
            import aiosmtplib

            from bot.config import _bool

            smtp = settings.smtp
            use_tls = _bool(smtp.get("ssl"), smtp.get("port") == "465")
            starttls = None if not smtp.get("starttls") else _bool(smtp.get("starttls"))
            port = int(smtp.get("port") or (465 if use_tls else 587 if starttls else 25))
            try:
                client = aiosmtplib.SMTP(hostname=smtp["host"], port=port, use_tls=use_tls,
                                         start_tls=False if use_tls else starttls, timeout=20)
                await client.connect()
                if smtp.get("user"):
                    await client.login(smtp["user"], smtp.get("password") or "")
                console.print(f"SMTP {smtp['host']}:{port} OK (TLS: {client.is_connected and (use_tls or bool(starttls))}"
                              f"{', login OK' if smtp.get('user') else ''}); sending as {smtp.get('from')}")
                await client.quit()
            except Exception as exc:  # noqa: BLE001
                console.print(f"[red]SMTP: {type(exc).__name__}: {exc}[/red]")
                problems += 1
        else:
            console.print("SMTP_HOST is not set: no replies by email")
        return problems

    if asyncio.run(go()):
        raise typer.Exit(1)
