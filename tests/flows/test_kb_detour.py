"""A free question typed at a menu is answered by the knowledge base, and the menu still works afterwards."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from storage.models import touchpoints
from tests.support import LoketServer, WebChatClient


async def test_question_at_a_menu_goes_to_the_knowledge_base(settings_factory: Any) -> None:
    server = LoketServer(settings_factory(LOKET_DEMO="true"))
    await server.start()
    try:
        async with WebChatClient(server.base_url) as chat:
            menu = await chat.say("halo", timeout=30)
            shop = next(c for c in menu["choices"] if "Toko" in c["label"])
            n = len(chat.replies())
            await chat.choose(shop["value"], shop["label"])
            shop_menu = (await chat.wait_replies(n + 1, timeout=30))[n]
            assert [c["label"] for c in shop_menu["choices"]][0] == "Cek status pesanan"

            # a question that is none of the shop menu's options
            answer = await chat.say("bagaimana cara mengembalikan barang yang rusak?", timeout=30)
            assert "Maaf, pilihan itu tidak ada" not in answer["text"]
            # the menu is still where the customer left it: "1" picks its first option
            n = len(chat.replies())
            await chat.send_text("1")
            nxt = (await chat.wait_replies(n + 1, timeout=30))[n]
            assert "pesanan" in nxt["text"].lower()
        kinds = [r["kind"] for r in await server.fetch(select(touchpoints.c.kind).order_by(touchpoints.c.id))]
        assert "kb_answer" in kinds or "kb_offer" in kinds or any(k.startswith("kb_") for k in kinds)
        assert "flow_invalid_answer" not in kinds
    finally:
        await server.stop()
