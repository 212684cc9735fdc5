"""The public help centre in real Chromium: categories, article, search, language switch, escaping."""

from __future__ import annotations

from typing import Any

import aiohttp
from playwright.async_api import Page, expect

from knowledge_base import DEMO_PATH
from knowledge_base.importer import ArticleInput
from tests.conftest_browser import screenshot_path
from tests.knowledge_base.test_chat import COMPONENTS
from tests.support import LoketServer

expect.set_options(timeout=15_000)  # CI runs the suite twice on 2 shared cores

XSS_TITLE = '<img src=x onerror="window.__xss=1">Harga <b>promo</b>'
XSS_BODY = ('Halo <script>window.__xss=2</script> dunia.\n\n[klik](javascript:window.__xss=3)\n\n'
            '<iframe src="https://evil.example"></iframe>')


async def test_help_centre_pages(settings_factory: Any, page: Page) -> None:
    loket = LoketServer(settings_factory(LOKET_KB=str(DEMO_PATH), LOKET_KB_SEMANTIC="off"), components=COMPONENTS)
    await loket.start()
    try:
        await page.goto(loket.base_url + "/help?lang=id")
        assert await page.get_attribute("html", "lang") == "id"
        await expect(page.get_by_role("heading", level=1)).to_have_text("Pusat Bantuan")
        await expect(page.get_by_role("main")).to_be_visible()
        await expect(page.get_by_role("search")).to_be_visible()
        await expect(page.get_by_label("Cari artikel bantuan")).to_be_visible()
        await expect(page.get_by_role("link", name="Klinik: janji temu")).to_be_visible()
        await page.screenshot(path=screenshot_path("help-centre"), full_page=True)
        kb = loket.rt.services["kb"]
        await kb.save([ArticleInput("xss-test", XSS_TITLE, XSS_BODY, "Ringkasan <script>x</script>", "keamanan",
                                    "Keamanan", "id", (), ("uji keamanan judul", "uji xss", "uji skrip"))])

        await page.get_by_role("link", name="Klinik: janji temu").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Klinik: janji temu")
        await page.get_by_role("link", name="Mengubah atau membatalkan janji temu").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Mengubah atau membatalkan janji temu")
        await expect(page.locator(".body strong").first).to_have_text("2 jam sebelum")

        await page.get_by_label("Cari artikel bantuan").fill("gmn cara bayar pake gopay")
        await page.get_by_role("button", name="Cari").click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("gmn cara bayar pake gopay")
        await expect(page.locator("ol.results li a").first).to_have_text("Metode pembayaran")

        await page.get_by_role("link", name="EN", exact=True).click()
        assert await page.get_attribute("html", "lang") == "en"
        await expect(page.get_by_label("Search help articles")).to_have_value("gmn cara bayar pake gopay")
        await page.get_by_label("Search help articles").fill("can I pay with gopay")
        await page.get_by_role("button", name="Search").click()
        await expect(page.locator("ol.results li a").first).to_have_text("Payment methods")
        await page.goto(loket.base_url + "/help")  # the language choice is remembered
        await expect(page.get_by_role("heading", level=1)).to_have_text("Help Centre")

        await page.goto(loket.base_url + "/help/search?q=zzqqxx+wibble&lang=id")
        await expect(page.get_by_role("status")).to_contain_text("Tidak ada artikel")

        # customer-visible content is escaped: nothing runs, the text shows literally
        await page.goto(loket.base_url + "/help/articles/xss-test")
        await expect(page.get_by_role("heading", level=1)).to_have_text(XSS_TITLE)
        await expect(page.locator(".body")).to_contain_text("<script>window.__xss=2</script>")
        assert await page.evaluate("window.__xss === undefined")
        assert await page.locator(".body script, .body iframe, h1 img").count() == 0
        assert await page.locator('a[href^="javascript"]').count() == 0

        await page.get_by_role("button", name="Ya").click()
        await expect(page.get_by_role("status")).to_contain_text("Terima kasih")
        async with aiohttp.ClientSession() as http:
            async with http.get(loket.base_url + "/help/articles/no-such-article") as resp:
                assert resp.status == 404
            async with http.get(loket.base_url + "/help/search", params={"q": "🙏" * 500}) as resp:
                assert resp.status == 200
                assert "Content-Security-Policy" in resp.headers
    finally:
        await loket.stop()
