"""The widget in real Chromium: open `/`, type, get the reply; reload — the history is there."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.conftest_browser import browser, page, screenshot_path  # noqa: F401
from tests.support import LoketServer


async def test_widget_chat_and_history_after_reload(loket: LoketServer, page: Page) -> None:  # noqa: F811
    await page.goto(loket.base_url + "/")
    await page.get_by_test_id("loket-open").click()
    box = page.get_by_test_id("loket-input")
    await box.fill("halo, jam buka klinik kapan?")
    await box.press("Enter")
    log = page.get_by_test_id("loket-log")
    await expect(log.locator('.msg[data-author="bot"]')).to_have_count(1, timeout=10000)
    await expect(log.locator('.msg[data-author="bot"]').first).to_contain_text("Selamat datang")
    await expect(log.locator(".choices button")).to_have_count(2)
    await page.screenshot(path=screenshot_path("webchat-widget"))

    await page.reload()
    log = page.get_by_test_id("loket-log")
    await expect(log.locator(".msg")).to_have_count(2, timeout=10000)
    await expect(log.locator('.msg[data-author="customer"]')).to_have_text("halo, jam buka klinik kapan?")

    # a button answers: the choice goes to the router and the bot hands over to a person
    await log.locator(".choices button").first.click()
    await expect(log.locator('.msg[data-author="bot"]')).to_have_count(2, timeout=10000)
    await expect(log.locator('.msg[data-author="bot"]').last).to_contain_text("petugas")
