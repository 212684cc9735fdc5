"""The knowledge base in the web chat: answer + link + feedback, "tidak" → human, top choices, nothing → human."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from knowledge_base import DEMO_PATH
from knowledge_base.importer import ArticleInput
from knowledge_base.models import kb_articles, kb_queries
from storage.models import conversations, touchpoints
from tests.support import LoketServer, WebChatClient, wait_for

# Only the parts these tests need, so another feature's work in progress cannot break them.
COMPONENTS = ["bot.channels.webchat", "bot.health", "knowledge_base"]
KB_ENV = {"LOKET_KB": str(DEMO_PATH), "LOKET_KB_SEMANTIC": "off", "LOKET_PUBLIC_URL": "https://help.example.test"}


async def start(settings_factory: Any, **env: str) -> LoketServer:
    server = LoketServer(settings_factory(**(KB_ENV | env)), components=COMPONENTS)
    await server.start()
    return server


async def next_replies(chat: WebChatClient, text: str, n: int) -> list[dict[str, Any]]:
    before = len(chat.replies())
    await chat.send_text(text)
    return (await chat.wait_replies(before + n, timeout=30))[before:before + n]


async def test_answer_link_feedback_and_unhelpful_offers_a_human(settings_factory: Any) -> None:
    loket = await start(settings_factory)
    try:
        async with WebChatClient(loket.base_url) as chat:
            answer, question = await next_replies(chat, "klinik bukanya jam brp ya hari minggu?", 2)
            assert "Senin–Jumat pukul 07.00–21.00" in answer["text"]
            assert "https://help.example.test/help/articles/klinik-jam-buka?lang=id" in answer["text"]
            assert question["text"] == "Apakah ini membantu?"
            assert [c["label"] for c in question["choices"]] == ["Ya", "Tidak"]
            (reply,) = await next_replies(chat, "tidak", 1)
            assert "petugas" in reply["text"]
            assert "agent" in [c["value"] for c in reply["choices"]]
            (queued,) = await next_replies(chat, "1", 1)  # choice 1 = talk to a person
            assert "antrean" in queued["text"]
        conv = (await loket.fetch(select(conversations)))[0]
        assert conv["state"] == "queued" and not conv["meta"].get("kb_pending")
        kinds = [t["kind"] for t in await loket.fetch(select(touchpoints).order_by(touchpoints.c.id))]
        assert kinds.count("kb_answer") == 1 and kinds.count("kb_feedback") == 1 and "escalated" in kinds
        fb = [t for t in await loket.fetch(select(touchpoints)) if t["kind"] == "kb_feedback"][0]
        assert fb["payload"]["helpful"] is False and fb["payload"]["article"] == "klinik-jam-buka"
        art = (await loket.fetch(select(kb_articles).where(kb_articles.c.external_id == "klinik-jam-buka")))[0]
        assert (art["views"], art["helpful"], art["unhelpful"]) == (1, 0, 1)
        outcomes = [r["outcome"] for r in await loket.fetch(select(kb_queries).order_by(kb_queries.c.id))]
        assert outcomes == ["answered", "unhelpful"]
    finally:
        await loket.stop()


async def test_helpful_feedback_by_number_and_english(settings_factory: Any) -> None:
    loket = await start(settings_factory)
    try:
        async with WebChatClient(loket.base_url) as chat:
            answer, question = await next_replies(chat, "hello, is there free shipping to Java?", 2)
            assert "/help/articles/shop-shipping?lang=en" in answer["text"]
            assert question["text"] == "Was this helpful?"
            (thanks,) = await next_replies(chat, "1", 1)
            assert "Thank you for the feedback" in thanks["text"]
            # after feedback, "1" is no longer read as feedback
            art = (await loket.fetch(select(kb_articles).where(kb_articles.c.external_id == "shop-shipping")))[0]
            assert art["helpful"] == 1
    finally:
        await loket.stop()


async def test_low_confidence_offers_top_choices_and_a_pick_answers(settings_factory: Any) -> None:
    loket = await start(settings_factory, LOKET_KB_ANSWER_THRESHOLD="1.5", LOKET_KB_OFFER_THRESHOLD="0.01")
    try:
        async with WebChatClient(loket.base_url) as chat:
            (offer,) = await next_replies(chat, "mau batalin pesanan yang sudah dibayar", 1)
            values = [c["value"] for c in offer["choices"]]
            assert len(values) == 4 and values[-1] == "agent"
            assert values[0] == "kb:article:toko-batal-pesanan"
            answer, question = await next_replies(chat, "1", 2)
            assert "Membatalkan pesanan" in answer["text"] and question["text"] == "Apakah ini membantu?"
        q = await loket.fetch(select(kb_queries).order_by(kb_queries.c.id))
        assert [r["outcome"] for r in q] == ["offered", "answered"]
    finally:
        await loket.stop()


async def test_nothing_relevant_offers_a_human_and_greetings_are_not_misses(settings_factory: Any) -> None:
    loket = await start(settings_factory)
    try:
        async with WebChatClient(loket.base_url) as chat:
            (greeting,) = await next_replies(chat, "halo kak", 1)
            assert "Selamat datang" in greeting["text"]
            (miss,) = await next_replies(chat, "resep kue nastar yang renyah gimana", 1)
            assert "belum menemukan jawaban" in miss["text"]
            assert [c["value"] for c in miss["choices"]] == ["agent", "menu"]
            (welcome,) = await next_replies(chat, "makasih ya", 1)
            assert "Sama-sama" in welcome["text"]
            (emoji,) = await next_replies(chat, "🙏🙏", 1)
            assert emoji["author"] == "bot"
            huge = "kartu " * 3000
            (big,) = await next_replies(chat, huge[:4000], 1)
            assert big["author"] == "bot"
        q = await loket.fetch(select(kb_queries))
        assert [r["outcome"] for r in q][:1] == ["none"]
        assert all("halo" not in r["text"] and "makasih" not in r["text"] for r in q)
    finally:
        await loket.stop()


async def test_article_change_is_searchable_without_restart(settings_factory: Any) -> None:
    loket = await start(settings_factory)
    try:
        kb = loket.rt.services["kb"]
        await kb.save([ArticleInput("klinik-apotek", "Apotek klinik buka 24 jam", "Apotek klinik buka 24 jam.",
                                    "Apotek klinik buka 24 jam setiap hari.", "klinik-layanan", "Layanan", "id",
                                    (), ("Apotek buka jam berapa?", "Bisa tebus resep malam?", "Apotek 24 jam?"))])
        async with WebChatClient(loket.base_url) as chat:
            answer, _ = await next_replies(chat, "apotek buka malam hari ga?", 2)
            assert "Apotek klinik buka 24 jam setiap hari" in answer["text"]
        # another process's write: bump the stored version; the poller rebuilds
        from knowledge_base import store

        async with loket.rt.engine.begin() as conn:
            await conn.execute(kb_articles.update().where(kb_articles.c.external_id == "klinik-apotek")
                               .values(published=False))
            await store.bump_version(conn, loket.rt.clock.now())

        async def gone() -> bool:
            await asyncio.sleep(0)
            return "klinik-apotek" not in kb.ranker.docs

        await wait_for(gone, timeout=30, what="index reload after version bump")
    finally:
        await loket.stop()
