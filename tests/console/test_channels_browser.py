"""An agent answers Telegram and WhatsApp customers from the console; the replies reach the providers' fakes."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Browser, expect
from sqlalchemy import select

from storage.models import conversations
from tests.conftest import free_port
from tests.conftest_browser import browser  # noqa: F401
from tests.console.helpers import make_agent
from tests.console.test_browser import login
from tests.fakes.telegram import FakeTelegram
from tests.fakes.twilio import FakeTwilio
from tests.support import LoketServer, wait_for
from tests.telegram.conftest import SECRET, TOKEN
from tests.whatsapp.conftest import ACCOUNT_SID, AUTH_TOKEN, CUSTOMER, SENDER

COMPONENTS = ["bot.channels.webchat", "bot.channels.telegram", "bot.channels.whatsapp", "bot.health",
              "agent_console.escalation", "agent_console.web"]


async def escalated(server: LoketServer, channel: str) -> int:
    async def check() -> int | None:
        rows = await server.fetch(select(conversations.c.id, conversations.c.state)
                                  .where(conversations.c.channel == channel))
        return rows[0]["id"] if rows and rows[0]["state"] in {"queued", "assigned"} else None

    return int(await wait_for(check, timeout=15, what=f"an escalated {channel} conversation"))


async def test_agent_replies_reach_telegram_and_whatsapp(browser: Browser, settings_factory: Any) -> None:  # noqa: F811
    async with FakeTelegram(TOKEN) as tg:
        twilio = FakeTwilio(ACCOUNT_SID, AUTH_TOKEN, senders=[SENDER])
        await twilio.start()
        port = free_port()
        settings = settings_factory(
            LOKET_PORT=str(port), LOKET_PUBLIC_URL=f"http://127.0.0.1:{port}", LOKET_CONSOLE_TICK="0.1",
            TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_WEBHOOK_SECRET=SECRET, TELEGRAM_API_BASE=tg.base_url,
            TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_WHATSAPP_FROM=SENDER,
            TWILIO_API_BASE=twilio.base_url,
        )
        server = LoketServer(settings, components=COMPONENTS)
        await server.start()
        tg.webhook = {"url": server.base_url + "/webhooks/telegram", "secret_token": SECRET}
        try:
            await make_agent(server, "ana@example.com", name="Ana", max_chats=5)
            page = await login(browser, server, "ana@example.com")
            for text in ("halo", "0"):
                status, _ = await tg.post_update(tg.user_message(7001, text))
                assert status == 200
            for text in ("halo", "0"):
                status, _, _ = await twilio.send_inbound(server.base_url + "/webhooks/twilio/whatsapp", CUSTOMER, text)
                assert status == 200

            for channel, reply in (("telegram", "Halo dari Ana lewat Telegram"),
                                   ("whatsapp", "Halo dari Ana lewat WhatsApp")):
                conv_id = await escalated(server, channel)
                await page.goto(f"{server.base_url}/console?view=all")  # the agent sees it in the inbox
                row = page.locator(f"tr.conv[data-conv='{conv_id}']")
                await expect(row.locator(".chip")).to_have_text(channel)
                await row.locator("a.conv-link").click()
                await page.wait_for_url(f"{server.base_url}/console/c/{conv_id}")
                await expect(page.locator("body")).to_have_attribute("data-ws", "open", timeout=10000)
                await page.fill("#reply-text", reply)
                await page.click("#send-reply")
                await expect(page.locator(".msg.author-agent .body", has_text=reply)).to_be_visible(timeout=10000)

            async def tg_got() -> bool:
                return any(m.text == "Halo dari Ana lewat Telegram" for m in tg.sent_to(7001))

            async def wa_got() -> bool:
                return any(m.get("Body") == "Halo dari Ana lewat WhatsApp" and m.get("From") == SENDER
                           for m in twilio.sent_to(CUSTOMER))

            await wait_for(tg_got, timeout=15, what="the agent's reply at the Telegram fake")
            await wait_for(wa_got, timeout=15, what="the agent's reply at the Twilio fake")
        finally:
            await server.stop()
            await twilio.stop()
