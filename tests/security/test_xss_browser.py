"""XSS in every customer-supplied field is shown as text, in real Chromium: the console's inbox, conversation,
customer and dashboard pages, a live timeline update, and the pages that echo a query parameter."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from playwright.async_api import Browser, Page, expect
from sqlalchemy import insert, select, update

from storage.models import conversations, customers, identities, messages, touchpoints
from tests.conftest_browser import browser  # noqa: F401
from tests.console.helpers import PASSWORD, make_agent
from tests.support import LoketServer, WebChatClient

FIELDS = ["display_name", "identity_address", "identity_name", "tag", "attr_key", "attr_value", "body",
          "attachment_name", "csat_comment", "handover", "label", "timeline_payload"]


def payload(field: str) -> str:
    """Breaks out of text, of double- and single-quoted attributes; reports itself if any of it runs."""
    run = f"(window.__xss=window.__xss||[]).push(`{field}`)"
    return f"<img src=x onerror={run}>\"'><svg/onload={run}>{field}"


async def _assert_inert(page: Page, where: str) -> None:
    ran = await page.evaluate("window.__xss || []")
    assert ran == [], f"{where}: script from {ran} ran"
    assert await page.locator("[onerror], [onload]").count() == 0, f"{where}: an injected element exists"
    assert page.dialogs == [], where  # type: ignore[attr-defined]


async def _sign_in(browser: Browser, server: LoketServer) -> Page:  # noqa: F811
    page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
    page.dialogs = []  # type: ignore[attr-defined]
    page.on("dialog", lambda d: page.dialogs.append(d.message))  # type: ignore[attr-defined]
    await page.goto(server.base_url + "/console/login")
    await page.fill("input[name=email]", "sup@example.com")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(server.base_url + "/console")
    return page


async def test_every_customer_field_is_escaped(browser: Browser, settings_factory: Any) -> None:  # noqa: F811
    server = LoketServer(settings_factory(LOKET_CONSOLE_TICK="0.1"))
    await server.start()
    try:
        await make_agent(server, "sup@example.com", role="supervisor")
        async with WebChatClient(server.base_url) as chat:
            await chat.say(payload("body"))
            await chat.say("0")  # to a human: the conversation is in the console
            conv = (await server.fetch(select(conversations)))[0]
            cust_id = conv["customer_id"]
            async with server.rt.engine.begin() as conn:
                await conn.execute(update(customers).where(customers.c.id == cust_id).values(
                    display_name=payload("display_name"), tags=[payload("tag")],
                    attributes={payload("attr_key"): payload("attr_value")}))
                await conn.execute(update(identities).where(identities.c.id == conv["identity_id"]).values(
                    display_name=payload("identity_name")))
                # a second way to reach the customer, with an address as odd as an e-mail address may be
                await conn.execute(insert(identities).values(
                    customer_id=cust_id, channel="email", address=payload("identity_address"), verified=False,
                    unreachable=False, meta={}, created_at=server.rt.clock.now()))
                await conn.execute(update(conversations).where(conversations.c.id == conv["id"]).values(
                    csat_score=3, csat_comment=payload("csat_comment"), handover={"question": payload("handover")},
                    labels=[payload("label")]))
                await conn.execute(update(messages).where(messages.c.conversation_id == conv["id"],
                                                          messages.c.direction == "in").values(
                    attachments=[{"filename": payload("attachment_name"), "content_type": payload("attachment_type"),
                                  "size": 1}]))  # the content type is never shown; it still must not run
                await conn.execute(insert(touchpoints).values(
                    customer_id=cust_id, conversation_id=conv["id"], kind="location", channel="webchat",
                    actor="customer", payload={"label": payload("timeline_payload")},
                    created_at=server.rt.clock.now()))
            page = await _sign_in(browser, server)
            await page.goto(server.base_url + "/console?view=all")
            await expect(page.locator("a.conv-link")).to_contain_text("display_name")
            await _assert_inert(page, "inbox")
            await page.goto(f"{server.base_url}/console/c/{conv['id']}")
            await expect(page.locator("#customer-name")).to_have_text(payload("display_name"))
            await expect(page.locator(".msg.in .body").first).to_have_text(payload("body"))
            await _assert_inert(page, "conversation")
            # a live update re-renders the timeline from the server while the page is open
            await expect(page.locator("body")).to_have_attribute("data-ws", "open", timeout=10000)
            await chat.send_text(payload("live"))
            await expect(page.locator(".msg.in .body", has_text="live")).to_have_text(payload("live"), timeout=10000)
            await _assert_inert(page, "live timeline")
            html = await page.content()
            await page.goto(f"{server.base_url}/console/customers/{cust_id}")
            html += await page.content()
            await _assert_inert(page, "customer")
            await page.goto(f"{server.base_url}/console/dashboard")
            await _assert_inert(page, "dashboard")
            # pages that echo what a link carries
            for path in (f"/console/c/{conv['id']}?rejected={quote(payload('rejected'))}",
                         f"/console/login?error={quote(payload('login_error'))}",
                         f"/help/search?q={quote(payload('help_search'))}"):
                await page.goto(server.base_url + path)
                await _assert_inert(page, path)
            # every field reached a page (escaped: the markup is visible as text, not as elements)
            missing = [f for f in FIELDS if f not in html]
            assert missing == [], missing
            await page.context.close()
    finally:
        await server.stop()
