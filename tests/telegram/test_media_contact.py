"""Photos and documents (getFile + download), unsupported content, contact sharing and identity merge."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select

from storage.models import customers, identities, messages, touchpoints
from storage.repositories import add_touchpoint, customer_timeline, find_or_create_customer
from tests.fakes.telegram import FakeTelegram
from tests.support import LoketServer, wait_for

from .conftest import wait_sent


async def inbound(loket: LoketServer, n: int = 0) -> list[dict[str, object]]:
    """Inbound messages; with ``n``, first wait until the router has stored that many."""
    async def rows() -> list[dict[str, object]]:
        return await loket.fetch(select(messages).where(messages.c.direction == "in").order_by(messages.c.id))

    if n:
        await wait_for(lambda: _at_least(rows, n), what=f"{n} routed inbound message(s)")
    return await rows()


async def _at_least(fetch: Any, n: int) -> bool:
    return len(await fetch()) >= n


async def test_photo_is_downloaded_into_attachment_storage(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    fake.add_chat(7001)
    image = b"\xff\xd8\xff\xe0 a small jpeg " + bytes(range(256)) * 40
    upd = fake.photo_message(7001, image, caption="resep dokter saya")
    status, _ = await fake.post_update(upd)
    assert status == 200
    [msg] = await inbound(loket_tg, 1)
    assert msg["body"] == "resep dokter saya"
    [att] = msg["attachments"]
    assert (att["content_type"], att["size"], att["sha256"]) == ("image/jpeg", len(image),
                                                                 hashlib.sha256(image).hexdigest())
    channel = loket_tg.rt.services["telegram"]
    assert channel.store.read(att["sha256"]) == image
    big_id = upd["message"]["photo"][-1]["file_id"]
    assert [p["file_id"] for p in fake.calls_of("getFile")] == [big_id]  # the largest size, not the thumbnail
    await wait_sent(fake, 7001)
    # a redelivery does not download again
    assert (await fake.post_update(upd))[0] == 200
    assert len(fake.calls_of("getFile")) == 1
    assert len(await inbound(loket_tg)) == 1


async def test_document_is_stored_with_its_name_and_type(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    fake.add_chat(7002)
    pdf = b"%PDF-1.7\n" + b"0" * 5000
    assert (await fake.post_update(fake.document_message(7002, pdf, "hasil-lab.pdf", "application/pdf")))[0] == 200
    [msg] = await inbound(loket_tg, 1)
    [att] = msg["attachments"]
    assert (att["filename"], att["content_type"], att["size"]) == ("hasil-lab.pdf", "application/pdf", len(pdf))
    assert msg["purpose"] == "message"


async def test_oversize_and_unsupported_content_is_answered_politely(fake: FakeTelegram,
                                                                     loket_tg: LoketServer) -> None:
    fake.add_chat(7003)
    huge = fake.document_message(7003, b"pretend 30 MB", "video-rontgen.mp4", "video/mp4", size=30 * 1024 * 1024)
    exe = fake.document_message(7003, b"MZ\x90\x00", "setup.exe", "application/x-msdownload")
    for upd in (huge, exe, fake.sticker_message(7003)):
        status, body = await fake.post_update(upd)
        assert status == 200, body
    replies = await wait_sent(fake, 7003, 3, timeout=15)
    assert all("belum bisa kami proses" in (r.text or "") for r in replies)
    rows = await inbound(loket_tg, 3)
    assert [r["purpose"] for r in rows] == ["unsupported"] * 3
    assert [r["meta"]["unsupported"] for r in rows] == ["document", "document", "sticker"]
    assert "30.0 MB" in rows[0]["meta"]["reason"] or "31.5 MB" in rows[0]["meta"]["reason"]
    assert "unsupported type application/x-msdownload" in rows[1]["meta"]["reason"]
    assert fake.calls_of("getFile") == []  # refused before downloading anything
    tps = await loket_tg.fetch(select(touchpoints).where(touchpoints.c.kind == "unsupported_content"))
    assert len(tps) == 3


async def test_contact_sharing_merges_with_the_whatsapp_customer(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    rt = loket_tg.rt
    async with rt.engine.begin() as conn:
        wa_ident, wa_cust, _ = await find_or_create_customer(conn, channel="whatsapp", address="+6281234567890",
                                                             now=rt.clock.now(), display_name="Budi Santoso")
        await add_touchpoint(conn, customer_id=wa_cust["id"], kind="message_in", now=rt.clock.now(),
                             channel="whatsapp", actor="customer", payload={"text": "halo dari WA"})
    fake.add_chat(7004, first_name="Budi")
    await fake.post_update(fake.user_message(7004, "halo dari telegram"))
    await wait_sent(fake, 7004)
    [tg_ident] = await loket_tg.fetch(select(identities).where(identities.c.channel == "telegram"))
    tg_customer = tg_ident["customer_id"]
    assert tg_customer != wa_cust["id"]

    assert (await fake.post_update(fake.contact_message(7004, "6281234567890")))[0] == 200
    thanks = (await wait_sent(fake, 7004, 2))[1]
    assert "+6281234567890" in (thanks.text or "")

    idents = await loket_tg.fetch(select(identities).order_by(identities.c.id))
    assert {(i["channel"], i["customer_id"]) for i in idents} == {("whatsapp", wa_cust["id"]),
                                                                   ("telegram", wa_cust["id"])}
    [merged] = await loket_tg.fetch(select(customers).where(customers.c.id == tg_customer))
    assert merged["merged_into_id"] == wa_cust["id"]
    async with rt.engine.connect() as conn:
        timeline = await customer_timeline(conn, wa_cust["id"])
    assert {tp["channel"] for tp in timeline} >= {"whatsapp", "telegram"}
    kinds = [tp["kind"] for tp in timeline]
    assert "identity_merged" in kinds
    texts = [tp["payload"].get("text") for tp in timeline if tp["kind"] == "message_in"]
    assert texts[:2] == ["halo dari WA", "halo dari telegram"]
    [merge] = [tp for tp in timeline if tp["kind"] == "identity_merged"]
    assert merge["payload"]["merged_customer_id"] == tg_customer
    [contact] = [r for r in await inbound(loket_tg) if r["purpose"] == "contact"]
    assert contact["customer_id"] == wa_cust["id"] and contact["body"] == "+6281234567890"


async def test_someone_elses_contact_card_never_merges(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    rt = loket_tg.rt
    async with rt.engine.begin() as conn:
        _, wa_cust, _ = await find_or_create_customer(conn, channel="whatsapp", address="+6281299990000",
                                                      now=rt.clock.now())
    fake.add_chat(7005)
    assert (await fake.post_update(fake.contact_message(7005, "+62 812-9999-0000", own=False)))[0] == 200

    async def noted() -> list[dict[str, object]]:
        return await loket_tg.fetch(select(touchpoints).where(touchpoints.c.kind == "contact_shared"))

    [tp] = await wait_for(noted, what="contact_shared touchpoint")
    assert tp["payload"] == {"phone": "+6281299990000", "own": False}
    [tg_ident] = await loket_tg.fetch(select(identities).where(identities.c.channel == "telegram"))
    assert tg_ident["customer_id"] != wa_cust["id"]
