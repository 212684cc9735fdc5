"""Long polling for development, and the `loket telegram` commands against the fake Bot API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from typer.testing import CliRunner

from bot.channels.telegram_cli import app
from storage.models import messages
from tests.fakes.telegram import FakeTelegram
from tests.support import LoketServer, wait_for

from .conftest import COMPONENTS, SECRET, TOKEN, settle, telegram_env, wait_sent


async def test_polling_feeds_the_same_pipeline_and_confirms_updates(fake: FakeTelegram, settings_factory: Any) -> None:
    fake.webhook = {"url": "https://old.example.test/webhooks/telegram", "secret_token": SECRET}
    fake.add_chat(8001)
    first = fake.user_message(8001, "halo lewat polling")
    fake.enqueue(first)
    server = LoketServer(settings_factory(**telegram_env(fake, TELEGRAM_POLLING="true", TELEGRAM_POLL_TIMEOUT="1")),
                         components=COMPONENTS)
    await server.start()
    try:
        [reply] = await wait_sent(fake, 8001)
        assert "Selamat datang" in (reply.text or "")
        assert fake.webhook["url"] == ""  # polling removed the webhook first
        assert fake.calls_of("deleteWebhook")
        # the processed update is confirmed by the next getUpdates offset and not handed out again
        await wait_for(lambda: asyncio.sleep(0, not fake.updates), what="the update to be confirmed")
        polls = fake.calls_of("getUpdates")
        assert any(int(p.get("offset") or 0) == first["update_id"] + 1 for p in polls)
        assert polls[0]["allowed_updates"] == ["message", "edited_message", "callback_query", "my_chat_member"]
        # the same message arriving again (e.g. once by webhook, once by polling) is still one message
        fake.enqueue(first)
        fake.enqueue(fake.user_message(8001, "pesan kedua"))
        await wait_sent(fake, 8001, 2, timeout=15)
        await settle(0.5)
        n_in = await server.scalar(select(func.count()).select_from(messages).where(messages.c.direction == "in"))
        assert n_in == 2
        assert len(fake.sent_to(8001)) == 2
    finally:
        await server.stop()


async def run_cli(fake: FakeTelegram, tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    """Run `loket telegram …` in a thread (it has its own event loop) while the fake serves on ours."""
    full_env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "TELEGRAM_API_BASE": fake.base_url,
        "LOKET_PUBLIC_URL": "https://desk.example.test",
        "LOKET_SECRET_KEY": "cli-test-secret-key-0123456789",
        "LOKET_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}",
        "COLUMNS": "200",
        **env,
    }
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=full_env)
    return result.exit_code, result.output


async def test_cli_set_webhook_info_and_delete(fake: FakeTelegram, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    code, out = await run_cli(fake, tmp_path, "set-webhook", "--max-connections", "20")
    assert code == 0, out
    assert fake.webhook["url"] == "https://desk.example.test/webhooks/telegram"
    assert fake.webhook["secret_token"] == SECRET
    assert fake.webhook["allowed_updates"] == ["message", "edited_message", "callback_query", "my_chat_member"]
    assert fake.webhook["max_connections"] == 20
    assert "webhook set" in out and "@loket_test_bot" in out
    code, out = await run_cli(fake, tmp_path, "info")
    assert code == 0, out
    assert "https://desk.example.test/webhooks/telegram" in out
    code, out = await run_cli(fake, tmp_path, "delete-webhook")
    assert code == 0 and fake.webhook["url"] == "", out
    code, out = await run_cli(fake, tmp_path, "set-webhook", TELEGRAM_WEBHOOK_SECRET="")
    assert code == 2 and "TELEGRAM_WEBHOOK_SECRET is not set" in out
    code, out = await run_cli(fake, tmp_path, "info", TELEGRAM_BOT_TOKEN="123:WRONG")
    assert code == 1 and "Unauthorized" in out
