"""``loket telegram …``: webhook set-up and long polling for development (docs/telegram.md)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import bot.channels.aiogram_lazy  # noqa: F401 - first: aiogram types are built on first use

# isort: split
import typer
from aiogram.exceptions import TelegramAPIError
from rich.console import Console

from bot.cli_support import settings_or_exit
from bot.config import ConfigError, Settings

app = typer.Typer(help="Telegram bot: webhook set-up, long polling for development, status.", no_args_is_help=True)
console = Console()


def _settings() -> Settings:
    settings = settings_or_exit()
    if not settings.telegram_bot_token:
        console.print("[red]TELEGRAM_BOT_TOKEN is not set.[/red] Create a bot with @BotFather (/newbot) and set "
                      "TELEGRAM_BOT_TOKEN=<token> in the environment or .env.")
        raise typer.Exit(2)
    return settings


async def _with_bot(settings: Settings, fn: Any) -> Any:
    from bot.channels.telegram import make_bot

    bot = make_bot(settings)
    try:
        return await fn(bot)
    finally:
        await bot.session.close()


def _run(settings: Settings, fn: Any) -> Any:
    try:
        return asyncio.run(_with_bot(settings, fn))
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except TelegramAPIError as exc:
        console.print(f"[red]Telegram refused:[/red] {exc.message}")
        raise typer.Exit(1) from exc


def _print_info(me: Any, info: Any) -> None:
    console.print(f"bot: @{me.username} (id {me.id}, {me.first_name})")
    console.print(f"webhook: {info.url or '(none: updates wait for getUpdates / polling)'}")
    console.print(f"pending updates: {info.pending_update_count}")
    if info.allowed_updates:
        console.print(f"allowed updates: {', '.join(info.allowed_updates)}")
    if info.last_error_message:
        console.print(f"[yellow]last delivery error:[/yellow] {info.last_error_message} "
                      f"(at {info.last_error_date})")


@app.command("set-webhook")
def set_webhook(
    drop_pending: bool = typer.Option(False, "--drop-pending", help="Discard updates waiting at Telegram."),
    max_connections: int = typer.Option(40, help="Parallel webhook connections Telegram may open (1–100)."),
) -> None:
    """Point Telegram at LOKET_PUBLIC_URL/webhooks/telegram, with the secret token and allowed updates."""
    from bot.channels.telegram import ALLOWED_UPDATES, WEBHOOK_PATH

    settings = _settings()
    if not settings.telegram_webhook_secret:
        console.print("[red]TELEGRAM_WEBHOOK_SECRET is not set.[/red] Pick 1–256 characters of A–Z, a–z, 0–9, "
                      "'_' or '-', e.g. `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`.")
        raise typer.Exit(2)
    if not settings.env.get("LOKET_PUBLIC_URL"):
        console.print("[red]LOKET_PUBLIC_URL is not set.[/red] Telegram needs the public HTTPS address of this "
                      "server, e.g. LOKET_PUBLIC_URL=https://desk.example.com")
        raise typer.Exit(2)
    url = settings.public_url + WEBHOOK_PATH
    if not url.startswith("https://") and not settings.telegram_api_base:
        console.print("[yellow]warning:[/yellow] Telegram only delivers to HTTPS URLs (ports 443, 80, 88, 8443)")

    async def go(bot: Any) -> Any:
        await bot.set_webhook(url, secret_token=settings.telegram_webhook_secret, allowed_updates=ALLOWED_UPDATES,
                              drop_pending_updates=drop_pending, max_connections=max_connections)
        return await bot.get_me(), await bot.get_webhook_info()

    me, info = _run(settings, go)
    console.print(f"[green]webhook set[/green] to {url}")
    _print_info(me, info)


@app.command("delete-webhook")
def delete_webhook(
    drop_pending: bool = typer.Option(False, "--drop-pending", help="Discard updates waiting at Telegram."),
) -> None:
    """Remove the webhook (needed before long polling; `loket telegram poll` does it itself)."""
    settings = _settings()
    _run(settings, lambda bot: bot.delete_webhook(drop_pending_updates=drop_pending))
    console.print("[green]webhook removed[/green]")


@app.command("info")
def info() -> None:
    """Show the bot (getMe) and where Telegram delivers its updates (getWebhookInfo)."""
    settings = _settings()

    async def go(bot: Any) -> Any:
        return await bot.get_me(), await bot.get_webhook_info()

    me, hook = _run(settings, go)
    _print_info(me, hook)


@app.command("poll")
def poll() -> None:
    """Run Loket (like `loket run`) and fetch Telegram updates by long polling — for development without a
    public URL. Removes the webhook first; run `loket telegram set-webhook` again for production."""
    _settings()
    os.environ["TELEGRAM_POLLING"] = "1"
    from bot.serve import run_process

    run_process("all")
