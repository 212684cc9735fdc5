"""XSS payloads through every channel reach the console as text: Telegram (name, message, document name),
WhatsApp (profile name, message), email (sender name, subject, body, attachment name) and web chat, in Chromium."""

from __future__ import annotations

from email.utils import formataddr
from typing import Any

from playwright.async_api import Browser, expect
from sqlalchemy import select

from storage.models import conversations
from tests.conftest import free_port
from tests.conftest_browser import browser  # noqa: F401
from tests.console.helpers import make_agent
from tests.console.test_browser import login
from tests.email.conftest import Account, SmtpRecorder, dovecot, dovecot_server, email_env, mail, smtp  # noqa: F401
from tests.fakes.telegram import FakeTelegram
from tests.fakes.twilio import FakeTwilio
from tests.support import LoketServer, WebChatClient, wait_for
from tests.telegram.conftest import SECRET, TOKEN
from tests.whatsapp.conftest import ACCOUNT_SID, AUTH_TOKEN, CUSTOMER, SENDER

COMPONENTS = ["bot.channels.webchat", "bot.channels.telegram", "bot.channels.whatsapp", "bot.channels.email",
              "bot.health", "agent_console.escalation", "agent_console.web"]
NAME = '<img src=x onerror=alert("name")>'
TEXT = '<script>alert("text")</script><img src=x onerror=alert("text")>'
FILE = '<img src=x onerror=alert(1)>.pdf'
SUBJECT = '<svg onload=alert("subject")>Pesanan'


async def test_customer_strings_from_every_channel_render_as_text(
        browser: Browser, settings_factory: Any, dovecot: Account, smtp: SmtpRecorder) -> None:  # noqa: F811
    async with FakeTelegram(TOKEN) as tg:
        twilio = FakeTwilio(ACCOUNT_SID, AUTH_TOKEN, senders=[SENDER])
        await twilio.start()
        port = free_port()
        m = mail("budi@customer.example.test", SUBJECT, TEXT)
        del m["From"]
        m["From"] = formataddr((NAME, "budi@customer.example.test"))  # quoted, as a mail client writes it
        m.add_attachment(b"%PDF-1.4 test", maintype="application", subtype="pdf", filename=FILE)
        dovecot.append(m)
        settings = settings_factory(
            LOKET_PORT=str(port), LOKET_PUBLIC_URL=f"http://127.0.0.1:{port}", LOKET_CONSOLE_TICK="0.2",
            LOKET_DEMO="false", TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_WEBHOOK_SECRET=SECRET,
            TELEGRAM_API_BASE=tg.base_url, TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            TWILIO_WHATSAPP_FROM=SENDER, TWILIO_API_BASE=twilio.base_url, **email_env(dovecot, smtp),
        )
        server = LoketServer(settings, components=COMPONENTS)
        await server.start()
        tg.webhook = {"url": server.base_url + "/webhooks/telegram", "secret_token": SECRET}
        try:
            tg.add_chat(7001, first_name=NAME)
            for update in (tg.user_message(7001, TEXT),
                           tg.document_message(7001, b"%PDF-1.4 tg", FILE, "application/pdf")):
                assert (await tg.post_update(update))[0] == 200
            status, _, _ = await twilio.send_inbound(server.base_url + "/webhooks/twilio/whatsapp", CUSTOMER, TEXT,
                                                     profile_name=NAME)
            assert status == 200
            async with WebChatClient(server.base_url) as chat:
                await chat.say(TEXT)

            async def all_four() -> list[dict[str, Any]] | None:
                rows = await server.fetch(select(conversations.c.id, conversations.c.channel))
                return rows if {r["channel"] for r in rows} == {"telegram", "whatsapp", "email", "webchat"} else None

            convs = await wait_for(all_four, timeout=20, what="a conversation on each channel")
            await make_agent(server, "sari@example.com", role="supervisor", name="Sari")
            page = await login(browser, server, "sari@example.com")
            await page.goto(server.base_url + "/console?view=all&status=any")
            await expect(page.locator("tr.conv")).to_have_count(4)
            await expect(page.locator("a.conv-link", has_text=NAME)).to_have_count(3)  # tg, wa, email names
            for conv in convs:
                await page.goto(f"{server.base_url}/console/c/{conv['id']}")
                await expect(page.locator(".msg.in .body", has_text=TEXT).first).to_have_text(TEXT)
                if conv["channel"] != "webchat":
                    await expect(page.locator("#customer-name")).to_have_text(NAME)
                if conv["channel"] in {"telegram", "email"}:
                    await expect(page.locator(".att", has_text=FILE)).to_have_count(1)
                if conv["channel"] == "email":
                    await expect(page.locator(".msg.in .subject")).to_have_text(SUBJECT)
                assert await page.locator("main img, main svg, main script").count() == 0, conv["channel"]
                cust = await server.scalar(select(conversations.c.customer_id)
                                           .where(conversations.c.id == conv["id"]))
                await page.goto(f"{server.base_url}/console/customers/{cust}")
                await expect(page.locator("#customer-title")).to_be_visible()
                assert await page.locator("main img, main svg, main script").count() == 0, conv["channel"]
            assert page.dialogs == []  # type: ignore[attr-defined]
            await page.context.close()
        finally:
            await server.stop()
            await twilio.stop()
