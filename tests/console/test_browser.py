"""The console in Debian Chromium: login, live escalation and replies between two agents, XSS as text,
screenshots of the main screens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy import select

from storage.models import conversations
from tests.conftest_browser import browser, screenshot_path  # noqa: F401
from tests.console.helpers import PASSWORD, make_agent, make_team
from tests.support import LoketServer, WebChatClient, wait_for

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
async def server(settings_factory: Any) -> AsyncIterator[LoketServer]:
    s = LoketServer(settings_factory(LOKET_CONSOLE_TICK="0.1"))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def login(browser: Browser, server: LoketServer, email: str) -> Page:  # noqa: F811
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await ctx.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    page.dialogs = dialogs  # type: ignore[attr-defined]
    await page.goto(server.base_url + "/console/login")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(server.base_url + "/console")
    await expect(page.locator("body")).to_have_attribute("data-ws", "open", timeout=10000)
    return page


async def test_two_agents_live_reply_and_xss(browser: Browser, server: LoketServer) -> None:  # noqa: F811
    billing = await make_team(server, "Billing")
    await make_team(server, "VIP")
    await make_agent(server, "ana@example.com", name="Ana", team=billing)
    await make_agent(server, "sup@example.com", role="supervisor", name="Sari", max_chats=0)  # supervises only
    ana = await login(browser, server, "ana@example.com")
    sari = await login(browser, server, "sup@example.com")
    await ana.goto(server.base_url + "/console?view=mine")
    await sari.goto(server.base_url + "/console?view=all")
    await expect(sari.locator("body")).to_have_attribute("data-ws", "open", timeout=10000)
    await expect(ana.locator("body")).to_have_attribute("data-ws", "open", timeout=10000)
    async with WebChatClient(server.base_url) as chat:
        await chat.say("halo")
        await chat.say(XSS)
        await chat.send_text("0")
        # the escalated conversation appears live in both inboxes
        await expect(ana.locator("tr.conv")).to_have_count(1, timeout=10000)
        await expect(sari.locator("tr.conv")).to_have_count(1, timeout=10000)
        # auto-assigned to Ana (online, capacity left): Sari sees the assignment live
        await expect(sari.locator("tr.conv td.state")).to_have_text("assigned", timeout=10000)
        await ana.screenshot(path=screenshot_path("console-inbox"))
        cid = (await server.fetch(select(conversations.c.id)))[0]["id"]
        await ana.click(f"a[href='/console/c/{cid}']")
        await sari.goto(f"{server.base_url}/console/c/{cid}")
        await expect(sari.locator("body")).to_have_attribute("data-ws", "open", timeout=10000)
        body = ana.locator(".msg.in .body", has_text="onerror")
        await expect(body).to_have_text(XSS)  # rendered as text
        assert await ana.locator("#timeline img").count() == 0
        await ana.fill("#reply-text", "Halo, saya Ana. Ada yang bisa dibantu?")
        await ana.click("#send-reply")
        frame = await chat.wait_frame(lambda f: f.get("type") == "message" and "saya Ana" in f.get("text", ""))
        assert frame["text"].startswith("Halo, saya Ana")
        # Sari sees Ana's reply and the assignment live, without reloading
        await expect(sari.locator(".msg.author-agent .body", has_text="saya Ana")).to_be_visible(timeout=10000)
        await expect(sari.locator(".event.kind-assigned")).to_have_count(1, timeout=10000)
        # and the customer's answer arrives live on Ana's page
        await chat.send_text("Pesanan saya belum datang")
        await expect(ana.locator(".msg.in .body", has_text="belum datang")).to_be_visible(timeout=10000)
        await ana.screenshot(path=screenshot_path("console-conversation"), full_page=True)
        # the other way round: Sari's private note and her taking the conversation appear live on Ana's page
        await sari.fill("#note-text", "Cek resi di gudang dulu")
        await sari.click("#save-note")
        await expect(ana.locator(".note .body", has_text="Cek resi")).to_be_visible(timeout=10000)
        await expect(sari.locator(".note .body", has_text="Cek resi")).to_be_visible()
        # Sari moves it to Ana's team: Ana sees the transfer live, then the queue gives it to her again
        # (online, in the team, capacity left) — and she keeps access as a member meanwhile
        await sari.select_option("#assign-target", label="Team: Billing")
        await sari.click("#assign")
        await expect(ana.locator(".event.kind-assigned", has_text="team_id")).to_have_count(1, timeout=10000)
        await expect(ana.locator(".event.kind-assigned")).to_have_count(3, timeout=10000)
        await expect(sari.locator(".event.kind-assigned")).to_have_count(3, timeout=10000)
        # and Ana's next reply reaches Sari live
        await ana.fill("#reply-text", "Sudah saya cek di gudang.")
        await ana.click("#send-reply")
        await expect(sari.locator(".msg.author-agent .body", has_text="gudang")).to_be_visible(timeout=10000)
        # moved to a team Ana is not in: her open page says so instead of going quiet
        await sari.select_option("#assign-target", label="Team: VIP")
        await sari.click("#assign")
        await expect(ana.locator("#access-lost")).to_be_visible(timeout=10000)
        await sari.select_option("#assign-target", label="Ana (online)")
        await sari.click("#assign")
        await expect(sari.locator(".event.kind-assigned")).to_have_count(5, timeout=10000)
        await ana.reload()
        await ana.click("#resolve")
        await chat.wait_frame(lambda f: f.get("type") == "message" and len(f.get("choices") or []) == 5)
        await chat.say("4")
        await chat.say("lewati")
        await wait_for(lambda: server.scalar(select(conversations.c.csat_score)), what="csat")
        # the score lands on the timeline, live
        await expect(ana.locator(".event.kind-csat .csat-score").first).to_have_text("★ 4", timeout=10000)
        await sari.goto(f"{server.base_url}/console/dashboard")
        await expect(sari.locator("#csat-avg")).to_have_text("4.0")
        await sari.screenshot(path=screenshot_path("console-dashboard"), full_page=True)
        cust = (await server.fetch(select(conversations.c.customer_id)))[0]["customer_id"]
        await sari.goto(f"{server.base_url}/console/customers/{cust}")
        await expect(sari.locator("#customer-title")).to_be_visible()
        await sari.screenshot(path=screenshot_path("console-customer"), full_page=True)
    assert ana.dialogs == [] and sari.dialogs == []  # type: ignore[attr-defined]
    await ana.context.close()
    await sari.context.close()


async def test_customer_name_xss_and_login_page(browser: Browser, server: LoketServer) -> None:  # noqa: F811
    await make_agent(server, "sup@example.com", role="supervisor")
    page = await browser.new_page()
    await page.goto(server.base_url + "/console/login")
    await page.screenshot(path=screenshot_path("console-login"))
    await page.close()
    async with WebChatClient(server.base_url) as chat:
        await chat.say("halo")
        await chat.say("0")
    from storage.models import customers
    async with server.rt.engine.begin() as conn:
        await conn.execute(customers.update().values(display_name=XSS))
    sup = await login(browser, server, "sup@example.com")
    await sup.goto(server.base_url + "/console?view=all")
    await expect(sup.locator("a.conv-link")).to_contain_text(XSS)
    cid = (await server.fetch(select(conversations.c.id)))[0]["id"]
    await sup.goto(f"{server.base_url}/console/c/{cid}")
    await expect(sup.locator("#customer-name")).to_have_text(XSS)
    assert await sup.locator("img").count() == 0
    assert sup.dialogs == []  # type: ignore[attr-defined]
    await sup.context.close()
