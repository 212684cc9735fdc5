"""Fixtures for the WhatsApp channel: a fake Twilio and a Loket whose LOKET_PUBLIC_URL is its real URL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from bot.clock import Clock
from tests.conftest import free_port
from tests.fakes.twilio import FakeTwilio
from tests.support import LoketServer

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "f" * 8 + "0123456789abcdef0123456789ab"
SENDER = "whatsapp:+14155238886"
REMINDER_TEMPLATE = "HX" + "a1" * 16
CUSTOMER = "whatsapp:+6281234567890"


@dataclass
class WhatsAppEnv:
    loket: LoketServer
    fake: FakeTwilio
    clock: Clock

    @property
    def webhook(self) -> str:
        return self.loket.base_url + "/webhooks/twilio/whatsapp"

    @property
    def status_url(self) -> str:
        return self.loket.base_url + "/webhooks/twilio/status"


@pytest.fixture
async def wa_factory(settings_factory: Any) -> AsyncIterator[Callable[..., Any]]:
    """Start a fake Twilio and a Loket (WhatsApp channel only) pointed at it; extra env via kwargs."""
    started: list[tuple[LoketServer, FakeTwilio]] = []

    async def make(**env: str) -> WhatsAppEnv:
        clock = Clock(timedelta(0))
        fake = FakeTwilio(ACCOUNT_SID, AUTH_TOKEN, clock=clock, senders=[SENDER])
        await fake.start()
        port = free_port()
        settings = settings_factory(
            TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_WHATSAPP_FROM=SENDER,
            TWILIO_API_BASE=fake.base_url, LOKET_PORT=str(port), LOKET_PUBLIC_URL=env.pop("LOKET_PUBLIC_URL", f"http://127.0.0.1:{port}"),
            TWILIO_TEMPLATES=env.pop("TWILIO_TEMPLATES", json.dumps({"appointment_reminder": REMINDER_TEMPLATE})),
            **env,
        )
        server = LoketServer(settings, clock=clock, components=["bot.channels.whatsapp"])
        await server.start()
        started.append((server, fake))
        return WhatsAppEnv(server, fake, clock)

    yield make
    for server, fake in reversed(started):
        await server.stop()
        await fake.stop()


@pytest.fixture
async def wa(wa_factory: Callable[..., Any]) -> WhatsAppEnv:
    return await wa_factory()
