"""The supervisor and admin pages in Debian Chromium: the knowledge-base editor (live, sanitised preview; draft,
publish, help centre) and the SLA policies (a tighter target shows as a breach in the inbox, live)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.async_api import Browser, expect
from sqlalchemy import select

from bot.clock import FrozenClock
from knowledge_base import DEMO_PATH
from knowledge_base.models import kb_articles
from storage.models import conversations
from tests.conftest_browser import browser, screenshot_path  # noqa: F401
from tests.console.helpers import make_agent, make_team
from tests.console.test_browser import login
from tests.support import LoketServer, WebChatClient, wait_for

COMPONENTS = ["bot.channels.webchat", "bot.health", "knowledge_base", "agent_console.escalation",
              "agent_console.web"]
BODY = """## Sebelum datang

Hewan peliharaan **tidak boleh** masuk ruang periksa. Anjing pemandu boleh menemani pasien.

| Hewan | Boleh masuk? |
|---|---|
| Anjing pemandu | Ya |
| Kucing | Tidak |

<img src=x onerror=alert(1)> [klik](javascript:alert(2))"""


async def test_kb_editor_live_preview_draft_publish(browser: Browser, settings_factory: Any) -> None:  # noqa: F811
    server = LoketServer(settings_factory(LOKET_KB=str(DEMO_PATH), LOKET_KB_SEMANTIC="off", LOKET_DEMO="false",
                                          LOKET_CONSOLE_TICK="0.2"), components=COMPONENTS)
    await server.start()
    try:
        await make_agent(server, "sari@example.com", role="supervisor", name="Sari")
        page = await login(browser, server, "sari@example.com")
        await page.click("#nav-kb")
        await expect(page.locator("tr.kb-row")).to_have_count(40)
        await page.select_option("select[name=language]", "en")
        await page.click("#kb-filters button")
        await expect(page.locator("tr.kb-row")).to_have_count(20)
        await page.select_option("select[name=language]", "id")
        await page.click("#kb-filters button")
        await page.click("#kb-new")
        await expect(page.locator("#kb-language")).to_have_value("id")  # the list's language
        await page.fill("#kb-title", "Membawa hewan peliharaan")
        await page.fill("#kb-category", "klinik-umum")
        await page.fill("#kb-tags", "hewan, kucing")
        await page.fill("#kb-questions", "boleh bawa kucing ke klinik?\napakah hewan boleh masuk?")
        await page.fill("#kb-body", BODY)
        preview = page.locator("#kb-preview")
        # the live preview: rendered by the server as the help centre renders it, unsafe parts as text
        await expect(preview.locator("h2")).to_have_text("Sebelum datang", timeout=10000)
        await expect(preview.locator("strong")).to_have_text("tidak boleh")
        await expect(preview.locator("table td")).to_have_count(4)
        await expect(preview.locator("h1")).to_have_text("Membawa hewan peliharaan")
        assert await preview.locator("img").count() == 0
        assert await preview.locator("a[href^='javascript']").count() == 0
        await expect(preview).to_contain_text("<img src=x onerror=alert(1)>")
        await page.screenshot(path=screenshot_path("console-kb-editor"), full_page=True)
        await page.click("#kb-save")
        await expect(page.locator("#kb-saved")).to_be_visible()
        await expect(page.locator("#kb-state")).to_have_text("Draft")
        await expect(page.locator("#kb-version")).to_have_text("Version 1")
        await page.click("#kb-publish")
        await expect(page.locator("#kb-state")).to_have_text("Published")
        await expect(page.locator("#kb-version")).to_have_text("Version 2")
        row = (await server.fetch(select(kb_articles).where(kb_articles.c.external_id == "membawa-hewan-peliharaan")))
        assert row[0]["published"] is True
        # the help centre serves it now, and the bot answers with it (no restart)
        help_page = await page.context.new_page()
        await help_page.goto(server.base_url + "/help/articles/membawa-hewan-peliharaan")
        await expect(help_page.locator("#article-title")).to_have_text("Membawa hewan peliharaan")
        assert await help_page.locator("article img").count() == 0
        async with WebChatClient(server.base_url) as chat:
            await chat.say("halo")
            reply = await chat.say("boleh bawa kucing ke klinik?")
            assert "/help/articles/membawa-hewan-peliharaan" in reply["text"]
        assert page.dialogs == []  # type: ignore[attr-defined]
        await page.context.close()
    finally:
        await server.stop()


T0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


async def test_sla_policy_edit_shows_a_breach_live(browser: Browser, settings_factory: Any) -> None:  # noqa: F811
    server = LoketServer(settings_factory(LOKET_CONSOLE_TICK="0.1", LOKET_DEMO="false"), clock=FrozenClock(T0),
                         components=["bot.channels.webchat", "bot.health", "agent_console.escalation",
                                     "agent_console.web"])
    await server.start()
    try:
        await make_agent(server, "root@example.com", role="admin", name="Rina", max_chats=0)  # supervises only
        team = await make_team(server, "Klinik")
        page = await login(browser, server, "root@example.com")
        await page.click("#nav-sla")
        await page.fill("#default-normal-fr", "nanti")
        await page.click("#sla-save")
        await expect(page.locator("#sla-error")).to_be_visible()
        await expect(page.locator("#default-normal-fr")).to_have_value("nanti")  # kept, with the reason
        await expect(page.locator("#default-normal-fr + .field-error")).to_contain_text("is not a duration")
        await page.fill("#default-normal-fr", "5m")
        await page.fill("#default-normal-res", "1h")
        await page.fill(f"#team{team}-urgent-fr", "10m")  # the clinic answers urgent cases faster
        await page.fill(f"#team{team}-urgent-res", "2h")
        await page.click("#sla-save")
        await expect(page.locator("#sla-saved")).to_be_visible()
        await expect(page.locator("#default-normal-fr")).to_have_value("5m")
        await expect(page.locator(f"#team{team}-urgent-fr")).to_have_value("10m")
        await expect(page.locator(f"#team{team}-high-fr")).to_have_value("")  # inherits the default
        await page.screenshot(path=screenshot_path("console-sla"), full_page=True)
        await page.goto(server.base_url + "/console?view=all")
        await expect(page.locator("body")).to_have_attribute("data-ws", "open", timeout=10000)
        async with WebChatClient(server.base_url) as chat:
            await chat.say("halo")
            await chat.say("0")
            await expect(page.locator("tr.conv")).to_have_count(1, timeout=10000)

            async def dues() -> bool:
                row = (await server.fetch(select(conversations)))[0]
                return row["first_response_due"] is not None

            await wait_for(dues, what="SLA due times")
            await expect(page.locator("tr.conv .badge.breach")).to_have_count(0)
            server.rt.clock.advance(timedelta(minutes=6))  # past the 5-minute target
            await expect(page.locator("tr.conv .badge.breach")).to_have_count(1, timeout=10000)
            await expect(page.locator("#breached-count")).to_have_text("1")
        await page.context.close()
    finally:
        await server.stop()
