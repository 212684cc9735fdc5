"""The knowledge-base editor over HTTP: roles, CSRF, validation, drafts, publish/unpublish, versions, audit,
the sanitised preview, edit conflicts, and the bot's index following every change without a restart."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from bot.clock import Clock
from knowledge_base import DEMO_PATH
from knowledge_base.models import kb_articles
from knowledge_base.service import KnowledgeBase
from storage.models import audit_log
from tests.console.helpers import Agent, make_agent
from tests.flows.helpers import Driver, texts
from tests.support import LoketServer

COMPONENTS = ["bot.channels.webchat", "bot.health", "knowledge_base", "agent_console.escalation",
              "agent_console.web"]
ENV = {"LOKET_KB": str(DEMO_PATH), "LOKET_KB_SEMANTIC": "off", "LOKET_DEMO": "false",
       "LOKET_PUBLIC_URL": "https://help.example.test"}
PETS = {
    "id": "", "title": "Membawa hewan peliharaan", "language": "id", "category": "klinik-umum",
    "tags": "hewan, kucing, anjing",
    "questions": "boleh bawa kucing ke klinik?\napakah hewan peliharaan boleh masuk klinik?",
    "answer": "",
    "body": "Hewan peliharaan **tidak boleh** masuk ruang periksa.\n\nAnjing pemandu boleh menemani pasien.\n\n"
            "<script>alert('xss')</script> [klik](javascript:alert(1))",
}
QUESTION = "boleh bawa kucing ke klinik?"
ARTICLE = "membawa-hewan-peliharaan"


@pytest.fixture
async def server(settings_factory: Any) -> AsyncIterator[LoketServer]:
    s = LoketServer(settings_factory(**ENV), components=COMPONENTS)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def sup(server: LoketServer) -> AsyncIterator[Agent]:
    await make_agent(server, "sari@example.com", role="supervisor", name="Sari")
    a = Agent(server)
    await a.login("sari@example.com")
    try:
        yield a
    finally:
        await a.close()


async def article(server: LoketServer) -> dict[str, Any]:
    return (await server.fetch(select(kb_articles).where(kb_articles.c.external_id == ARTICLE)))[0]


async def help_status(server: LoketServer, agent: Agent) -> tuple[int, str]:
    async with agent.session.get(f"{server.base_url}/help/articles/{ARTICLE}") as resp:
        return resp.status, await resp.text()


async def bot_answers(server: LoketServer) -> bool:
    d = Driver(server.rt)
    await d.send("halo")
    return f"/help/articles/{ARTICLE}" in texts(await d.send(QUESTION))


async def actions(server: LoketServer) -> list[str]:
    rows = await server.fetch(select(audit_log.c.action).where(audit_log.c.object_type == "kb_article")
                              .order_by(audit_log.c.id))
    return [r["action"] for r in rows]


async def test_draft_publish_unpublish_versions_audit_and_live_index(server: LoketServer, sup: Agent) -> None:
    other_process = KnowledgeBase(server.rt.engine, Clock(), ENV)  # a worker that only polls kb_state
    await other_process.reload(force=True)
    status, html = await sup.get("/console/kb")
    assert status == 200 and "klinik-jam-buka" in html and 'id="kb-new"' in html
    status, html = await sup.get("/console/kb?language=en")
    assert "shop-shipping" in html and "klinik-jam-buka" not in html
    status, html = await sup.get("/console/kb?status=draft")
    assert "kb-row" not in html  # the demo articles are all published

    # no CSRF token: refused, nothing saved
    status, _ = await sup.post("/console/kb/new", {**PETS, "action": "save"}, csrf=False)
    assert status == 403
    assert not await server.fetch(select(kb_articles).where(kb_articles.c.external_id == ARTICLE))

    # save as draft: stored, not public, not answered by the bot
    status, _ = await sup.post("/console/kb/new", {**PETS, "action": "save"})
    assert status == 303
    art = await article(server)
    assert (art["published"], art["version"], art["category"]) == (False, 1, "klinik-umum")
    assert art["questions"] == QUESTION.split("\n") + ["apakah hewan peliharaan boleh masuk klinik?"]
    assert art["tags"] == ["hewan", "kucing", "anjing"] and art["answer"].startswith("Hewan peliharaan tidak boleh")
    assert (await help_status(server, sup))[0] == 404
    assert not await bot_answers(server)
    status, html = await sup.get("/console/kb?status=draft")
    assert f'data-article="{ARTICLE}"' in html

    # publish: version 2, public, answered at once by this process and, after its poll, by the other one
    status, _ = await sup.post(f"/console/kb/a/{ARTICLE}", {**PETS, "version": "1", "action": "publish"})
    assert status == 303
    art = await article(server)
    assert (art["published"], art["version"]) == (True, 2)
    status, page = await help_status(server, sup)
    assert status == 200 and "<strong>tidak boleh</strong>" in page
    assert "<script>alert" not in page and "&lt;script&gt;" in page and 'href="javascript:' not in page
    assert await bot_answers(server)
    assert ARTICLE not in other_process.ranker.docs
    assert await other_process.reload() and ARTICLE in other_process.ranker.docs

    # the editor shows an answer that is only the first paragraph as empty, so it follows the body
    status, html = await sup.get(f"/console/kb/a/{ARTICLE}")
    assert re.search(r'<textarea name="answer" id="kb-answer" rows="2"></textarea>', html)
    # an edit: "save" keeps it published and makes version 3
    changed = {**PETS, "body": PETS["body"] + "\n\nKucing boleh menunggu di mobil.", "version": "2"}
    status, _ = await sup.post(f"/console/kb/a/{ARTICLE}", {**changed, "action": "save"})
    assert status == 303
    art = await article(server)
    assert (art["published"], art["version"]) == (True, 3) and "menunggu di mobil" in art["body"]
    # saving the same text again changes nothing
    status, _ = await sup.post(f"/console/kb/a/{ARTICLE}", {**changed, "version": "3", "action": "save"})
    assert status == 303 and (await article(server))["version"] == 3

    # unpublish: gone from the help centre and from the bot's answers
    status, _ = await sup.post(f"/console/kb/a/{ARTICLE}", {**changed, "version": "3", "action": "unpublish"})
    assert status == 303
    art = await article(server)
    assert (art["published"], art["version"]) == (False, 4)
    assert (await help_status(server, sup))[0] == 404
    assert not await bot_answers(server)
    assert await actions(server) == ["kb.article.create", "kb.article.publish", "kb.article.update",
                                     "kb.article.update", "kb.article.unpublish"]
    entry = (await server.fetch(select(audit_log).where(audit_log.c.action == "kb.article.unpublish")))[0]
    assert entry["actor"] == "sari@example.com" and entry["before"]["published"] is True
    assert entry["after"]["published"] is False and entry["after"]["version"] == 4


async def test_bad_input_is_explained_and_the_text_is_kept(server: LoketServer, sup: Agent) -> None:
    status, html = await sup.post("/console/kb/new", {**PETS, "body": "  ", "action": "publish"})
    assert status == 400 and "the article has no body" in html and "Membawa hewan peliharaan" in html
    status, html = await sup.post("/console/kb/new", {**PETS, "id": "bad id!", "action": "save"})
    assert status == 400 and "may only contain letters, digits" in html
    status, html = await sup.post("/console/kb/new", {**PETS, "language": "fr", "action": "save"})
    assert status == 400 and "language &#39;fr&#39; is not supported" in html
    status, html = await sup.post("/console/kb/new", {**PETS, "id": "klinik-jam-buka", "action": "save"})
    assert status == 409 and "already used by another article" in html
    assert (await server.fetch(select(kb_articles.c.title).where(kb_articles.c.external_id == "klinik-jam-buka"))
            )[0]["title"] != PETS["title"]  # the existing article is untouched
    status, _ = await sup.post("/console/kb/new", {**PETS, "action": "bogus"})
    assert status == 400
    status, _ = await sup.get("/console/kb/a/no-such-article")
    assert status == 404
    assert not await server.fetch(select(kb_articles).where(kb_articles.c.external_id == ARTICLE))


async def test_a_stale_editor_gets_409_with_both_texts(server: LoketServer, sup: Agent) -> None:
    await sup.post("/console/kb/new", {**PETS, "action": "publish"})
    await sup.post(f"/console/kb/a/{ARTICLE}", {**PETS, "body": "Teks rekan kerja.", "version": "1",
                                                "action": "save"})
    status, html = await sup.post(f"/console/kb/a/{ARTICLE}", {**PETS, "body": "Teks saya sendiri.",
                                                               "version": "1", "action": "save"})
    assert status == 409 and "Teks saya sendiri." in html and "Teks rekan kerja." in html
    assert 'name="version" value="2"' in html  # saving again deliberately replaces version 2
    assert (await article(server))["body"] == "Teks rekan kerja."
    status, _ = await sup.post(f"/console/kb/a/{ARTICLE}", {**PETS, "body": "Teks saya sendiri.", "version": "2",
                                                            "action": "save"})
    assert status == 303 and (await article(server))["body"] == "Teks saya sendiri."


async def test_preview_is_the_help_centres_rendering_and_sanitised(server: LoketServer, sup: Agent) -> None:
    body = ("## Jam buka\n\n**Senin** sampai *Jumat*\n\n| hari | jam |\n|---|---|\n| Sabtu | 08-12 |\n\n"
            "<img src=x onerror=alert(1)> <script>alert(2)</script>\n\n[x](javascript:alert(3)) [ok](https://a.test)")
    status, html = await sup.post("/console/kb/preview", {"body": body, "title": "<b>Judul</b>"})
    assert status == 200
    assert "<h2>Jam buka</h2>" in html and "<strong>Senin</strong>" in html and "<table>" in html
    assert "<img" not in html and "<script" not in html and "&lt;script&gt;" in html
    assert 'href="javascript:' not in html and 'href="https://a.test"' in html
    assert "&lt;b&gt;Judul&lt;/b&gt;" in html
    status, _ = await sup.post("/console/kb/preview", {"body": body}, csrf=False)
    assert status == 403
    # the no-script path: the Preview button re-renders the form with the preview, saving nothing
    status, html = await sup.post("/console/kb/new", {**PETS, "body": body, "action": "preview"})
    assert status == 200 and "<strong>Senin</strong>" in html and re.search(r"<textarea[^>]*id=\"kb-body\"", html)
    assert not await server.fetch(select(kb_articles).where(kb_articles.c.external_id == ARTICLE))


async def test_agents_may_not_edit_the_knowledge_base(server: LoketServer) -> None:
    await make_agent(server, "budi@example.com")
    budi = Agent(server)
    try:
        await budi.login("budi@example.com")
        status, html = await budi.get("/console")
        assert "/console/kb" not in html  # not offered in the menu
        for path in ("/console/kb", "/console/kb/new", "/console/kb/a/klinik-jam-buka"):
            assert (await budi.get(path))[0] == 403, path
        assert (await budi.post("/console/kb/new", {**PETS, "action": "publish"}))[0] == 403
        assert (await budi.post("/console/kb/preview", {"body": "x"}))[0] == 403
        denied = await server.fetch(select(audit_log).where(audit_log.c.action == "access_denied"))
        assert len(denied) == 5 and {d["object_type"] for d in denied} == {"kb"}
        assert not await server.fetch(select(kb_articles).where(kb_articles.c.external_id == ARTICLE))
    finally:
        await budi.close()
