"""Telegram webhook: routing and replies, secret check, dedup, buttons, edits, deep links, bad input."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from storage.models import conversations, identities, inbox_items, messages, touchpoints
from tests.fakes.telegram import FakeTelegram
from tests.support import LoketServer, wait_for

from .conftest import SECRET, settle, wait_sent


async def count(loket: LoketServer, table: object, *where: object) -> int:
    q = select(func.count()).select_from(table)  # type: ignore[arg-type]
    for w in where:
        q = q.where(w)  # type: ignore[arg-type]
    return int(await loket.scalar(q))


async def test_message_reaches_router_and_reply_has_inline_keyboard(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    fake.add_chat(5001, first_name="Budi", language_code="id")
    fake.add_chat(5002, first_name="Alice", language_code="en")
    status, body = await fake.post_update(fake.user_message(5001, "halo, saya mau tanya jadwal"))
    assert status == 200, body
    status, _ = await fake.post_update(fake.user_message(5002, "hi there"))
    assert status == 200
    [reply] = await wait_sent(fake, 5001)
    assert reply.method == "sendmessage"
    assert "Halo Budi! Selamat datang" in (reply.text or "")
    assert [(b["text"], b["callback_data"]) for b in reply.buttons] == [
        ("Bicara dengan petugas", "agent"), ("Menu", "menu")]
    [en] = await wait_sent(fake, 5002)
    assert "Welcome" in (en.text or "")  # language_code "en" → English
    rows = await loket_tg.fetch(select(messages).where(messages.c.direction == "in").order_by(messages.c.id))
    assert [r["body"] for r in rows] == ["halo, saya mau tanya jadwal", "hi there"]
    assert rows[0]["channel_message_id"] == "m:5001:1"

    async def delivered() -> list[dict[str, object]] | None:
        rows = await loket_tg.fetch(select(messages).where(messages.c.direction == "out").order_by(messages.c.id))
        return rows if len(rows) == 2 and {r["status"] for r in rows} == {"sent"} else None

    out = await wait_for(delivered, what="both replies recorded as sent")
    # the two chats are routed independently: their replies may be stored in either order
    assert sorted(r["channel_message_id"].rsplit(":", 1)[0] for r in out) == ["out:5001", "out:5002"]
    ident = (await loket_tg.fetch(select(identities).where(identities.c.address == "5001")))[0]
    assert (ident["channel"], ident["display_name"]) == ("telegram", "Budi")


async def test_forged_or_missing_secret_is_refused_and_nothing_stored(fake: FakeTelegram,
                                                                      loket_tg: LoketServer) -> None:
    fake.add_chat(5003)
    for secret in ("wrong", "s3cret-but-longer", ""):
        status, body = await fake.post_update(fake.user_message(5003, "halo"), secret=secret or "")
        assert status == 403, (secret, body)
        assert "Secret-Token" in json.loads(body)["error"]
    fake.webhook["secret_token"] = None  # Telegram without a secret configured sends no header at all
    status, _ = await fake.post_update(fake.user_message(5003, "halo"), secret="")
    assert status == 403
    await settle(0.2)
    assert await count(loket_tg, inbox_items) == 0
    assert await count(loket_tg, messages) == 0
    assert fake.sent == []


async def test_same_update_three_times_is_one_message_and_one_reply(fake: FakeTelegram,
                                                                    loket_tg: LoketServer) -> None:
    fake.add_chat(5004)
    upd = fake.user_message(5004, "pesanan saya belum sampai")
    statuses = [(await fake.post_update(upd))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    await wait_sent(fake, 5004)
    await settle(0.6)
    assert len(fake.sent_to(5004)) == 1
    assert await count(loket_tg, inbox_items) == 1
    assert await count(loket_tg, messages, messages.c.direction == "in") == 1
    assert await count(loket_tg, messages, messages.c.direction == "out") == 1


async def test_callback_button_is_routed_as_choice_and_answered(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    fake.add_chat(5005)
    await fake.post_update(fake.user_message(5005, "halo"))
    [greeting] = await wait_sent(fake, 5005)
    press = fake.callback_press(5005, "agent", sent=greeting)
    status, _ = await fake.post_update(press)
    assert status == 200
    await wait_for(lambda: _answers(fake), what="answerCallbackQuery")
    assert fake.callback_answers[0]["callback_query_id"] == press["callback_query"]["id"]
    queued = (await wait_sent(fake, 5005, 2))[1]
    assert "sambungkan ke petugas" in (queued.text or "")
    [conv] = await loket_tg.fetch(select(conversations))
    assert conv["state"] == "queued"
    inbound = await loket_tg.fetch(select(messages).where(messages.c.direction == "in").order_by(messages.c.id))
    assert inbound[1]["body"] == "Bicara dengan petugas"  # the button's label, for the transcript
    assert inbound[1]["meta"]["button_payload"] == "agent"
    assert inbound[1]["channel_message_id"] == f"cb:{press['callback_query']['id']}"
    # the same press delivered again: stored once, answered once
    assert (await fake.post_update(press))[0] == 200
    await settle(0.3)
    assert len(fake.callback_answers) == 1
    assert await count(loket_tg, messages, messages.c.direction == "in") == 2


async def _answers(fake: FakeTelegram) -> list[dict[str, object]]:
    return fake.callback_answers


async def test_edited_message_is_recorded_without_a_second_answer(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    fake.add_chat(5006)
    original = fake.user_message(5006, "jadwal dokter hari senen?")
    await fake.post_update(original)
    await wait_sent(fake, 5006)
    edit = fake.edited_message(original, "jadwal dokter hari senin?")
    assert (await fake.post_update(edit))[0] == 200
    assert (await fake.post_update(edit))[0] == 200  # redelivery of the same edit
    await wait_for(lambda: loket_tg.fetch(select(touchpoints).where(touchpoints.c.kind == "message_edited")),
                   what="message_edited touchpoint")
    await settle(0.4)
    assert len(fake.sent_to(5006)) == 1
    edited = await loket_tg.fetch(select(messages).where(messages.c.purpose == "edited"))
    assert len(edited) == 1
    assert edited[0]["body"] == "jadwal dokter hari senin?"
    assert edited[0]["meta"]["edited_message_id"] == original["message"]["message_id"]


async def test_start_deep_link_payload_is_kept(fake: FakeTelegram, loket_tg: LoketServer) -> None:
    fake.add_chat(5007)
    assert (await fake.post_update(fake.user_message(5007, "/start appt_4711")))[0] == 200
    [hello] = await wait_sent(fake, 5007)
    assert "Selamat datang" in (hello.text or "")
    [ident] = await loket_tg.fetch(select(identities).where(identities.c.address == "5007"))
    assert ident["meta"]["start_payload"] == "appt_4711"
    [tp] = await loket_tg.fetch(select(touchpoints).where(touchpoints.c.kind == "deep_link"))
    assert tp["payload"] == {"payload": "appt_4711"}
    [msg] = await loket_tg.fetch(select(messages).where(messages.c.direction == "in"))
    assert (msg["purpose"], msg["body"], msg["meta"]["payload"]) == ("start", "/start", "appt_4711")
    # t.me/<bot>?start=flow_<id> asks the flow engine to open that flow
    assert (await fake.post_update(fake.user_message(5007, "/start flow_booking")))[0] == 200
    await wait_sent(fake, 5007, 2)
    rows = await loket_tg.fetch(select(messages).where(messages.c.direction == "in").order_by(messages.c.id))
    assert rows[1]["meta"]["start_flow"] == "booking"
    [ident] = await loket_tg.fetch(select(identities).where(identities.c.address == "5007"))
    assert ident["meta"]["start_payloads"] == ["appt_4711", "flow_booking"]


async def test_malformed_body_is_400_and_unknown_update_type_is_200_with_nothing_stored(
    fake: FakeTelegram, loket_tg: LoketServer
) -> None:
    cases = [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "integer 'update_id'"),
        (json.dumps({"message": {"text": "no update id"}}).encode(), "integer 'update_id'"),
        (json.dumps({"update_id": 7, "message": {"message_id": "x"}}).encode(), "not a valid Telegram Update"),
        (b"\xff\xfe\x00", "not valid JSON"),
    ]
    for body, reason in cases:
        status, text = await fake.post_update(body, secret=SECRET)
        assert status == 400, (body, text)
        assert reason in json.loads(text)["error"], text
    unknown = fake.raw_update("future_update_kind", {"id": 1, "something": True})
    status, text = await fake.post_update(unknown)
    assert status == 200, text
    assert json.loads(text)["outcome"] == "ignored"
    known_but_unserved = fake.raw_update("poll_answer", {"poll_id": "1", "option_ids": [0],
                                                         "user": fake.add_chat(5010)})
    assert (await fake.post_update(known_but_unserved))[0] == 200
    await settle(0.2)
    assert await count(loket_tg, inbox_items) == 0
    assert fake.sent == []


async def test_blocking_the_bot_via_my_chat_member_marks_identity_unreachable(fake: FakeTelegram,
                                                                               loket_tg: LoketServer) -> None:
    fake.add_chat(5008)
    await fake.post_update(fake.user_message(5008, "halo"))
    await wait_sent(fake, 5008)
    user = fake.chats[5008]
    member = {"chat": {"id": 5008, "type": "private", "first_name": "Budi"}, "from": user, "date": 1,
              "old_chat_member": {"status": "member", "user": fake._bot_user()},  # noqa: SLF001
              "new_chat_member": {"status": "kicked", "user": fake._bot_user(), "until_date": 0}}  # noqa: SLF001
    assert (await fake.post_update(fake.raw_update("my_chat_member", member)))[0] == 200
    [ident] = await loket_tg.fetch(select(identities).where(identities.c.address == "5008"))
    assert ident["unreachable"] is True
    assert "blocked" in ident["unreachable_reason"]
    assert await count(loket_tg, inbox_items) == 1
