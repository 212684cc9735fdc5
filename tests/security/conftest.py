from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings

TELEGRAM_TOKEN = "5555:SECURITY"
TELEGRAM_SECRET = "tg-webhook-secret-value"
TWILIO_SID = "AC" + "1" * 32
TWILIO_TOKEN = "twilio-auth-token-value-0123456789"


@pytest.fixture
def sync_db_url(db_factory: Any) -> Iterator[str]:
    url = asyncio.run(db_factory.new())
    yield url
    db_factory.release(url)


def channel_env(public_url: str = "https://loket.example.com") -> dict[str, str]:
    return {
        "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN, "TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
        "TELEGRAM_API_BASE": "http://127.0.0.1:9",
        "TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_WHATSAPP_FROM": "whatsapp:+14155238886", "TWILIO_API_BASE": "http://127.0.0.1:9",
        "LOKET_PUBLIC_URL": public_url,
    }


@pytest.fixture
def secure_settings(db_url: str, tmp_path: Path) -> Any:
    def make(**env: str) -> Any:
        return make_settings(db_url, tmp_path, **{**channel_env(), **env})

    return make
