"""Answers to a reminder in the same conversation (web chat): confirm / reschedule / cancel by digit, word and
button; free slots or a handover on reschedule; no answer by the deadline → the staff queue."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from bot.appointments.models import providers_t
from bot.appointments.reports import monthly, reminder_summary, status_summary
from bot.clock import aware
from storage.models import conversations, touchpoints
from tests.appointments.helpers import (
    T0,
    add_webchat,
    advance,
    appointment,
    import_rows,
    outbox_drained,
    reminders,
    row,
    start,
    wait_reminder,
)
from tests.support import LoketServer, WebChatClient, wait_for


async def _reminded(settings_factory: Any, tmp_path: Path, **env: str) -> tuple[LoketServer, Any, str]:
    loket, clock = await start(settings_factory, **env)
    await import_rows(loket, tmp_path, [row("P1", phone="081234567890", name="Budi")])
    token = await add_webchat(loket, (await appointment(loket, "P1"))["customer_id"])
    await advance(loket, clock, timedelta(hours=24))
    await wait_reminder(loket, "P1", "24h", "sent")
    await outbox_drained(loket)
    return loket, clock, token


async def _answer(chat: WebChatClient, how: str, text: str) -> dict[str, Any]:
    n = len(chat.replies())
    if how == "button":
        await chat.choose(text)
    else:
        await chat.send_text(text)
    return (await chat.wait_replies(n + 1))[n]


async def _kinds(loket: LoketServer) -> list[str]:
    return [r["kind"] for r in await loket.fetch(select(touchpoints.c.kind).order_by(touchpoints.c.id))]


CASES = [
    ("digit", "1", "confirmed", "sudah dikonfirmasi"),
    ("word", "Ya", "confirmed", "sudah dikonfirmasi"),
    ("word", "konfirmasi", "confirmed", "sudah dikonfirmasi"),
    ("button", "confirm", "confirmed", "sudah dikonfirmasi"),
    ("digit", "3", "cancelled", "sudah dibatalkan"),
    ("word", "batal", "cancelled", "sudah dibatalkan"),
    ("button", "cancel", "cancelled", "sudah dibatalkan"),
]


async def _many(settings_factory: Any, tmp_path: Path, n: int) -> tuple[LoketServer, list[str]]:
    loket, clock = await start(settings_factory)
    await import_rows(loket, tmp_path, [row(f"M{i}", phone=f"08123456780{i}", start=f"2026-11-25 {9 + i:02d}:00")
                                        for i in range(n)])
    tokens = [await add_webchat(loket, (await appointment(loket, f"M{i}"))["customer_id"]) for i in range(n)]
    await advance(loket, clock, timedelta(hours=30))  # 16:00 WIB the day before: every 24h stage is due
    for i in range(n):
        await wait_reminder(loket, f"M{i}", "24h", "sent")
    await outbox_drained(loket)
    return loket, tokens


async def test_confirm_and_cancel_by_digit_word_and_button(settings_factory: Any, tmp_path: Path) -> None:
    loket, tokens = await _many(settings_factory, tmp_path, len(CASES))
    try:
        for i, (how, text, status, expect) in enumerate(CASES):
            async with WebChatClient(loket.base_url, visitor=tokens[i]) as chat:
                assert "pengingat janji temu" in chat.history[-1]["text"]
                assert [c["value"] for c in chat.history[-1]["choices"]] == ["confirm", "reschedule", "cancel"]
                reply = await _answer(chat, how, text)
                assert expect in reply["text"], (how, text, reply)
                assert f"Rabu, 25 November 2026 {9 + i:02d}.00 WIB" in reply["text"]
            appt = await appointment(loket, f"M{i}")
            assert appt["status"] == status, (how, text)
            rems = await reminders(loket, f"M{i}")
            assert rems["24h"]["outcome"] == status
            assert rems["2h"]["status"] == ("skipped" if status == "cancelled" else "pending")
            kinds = [r["kind"] for r in await loket.fetch(select(touchpoints.c.kind).where(
                touchpoints.c.customer_id == appt["customer_id"]))]
            assert ("appointment_confirmed" if status == "confirmed" else "appointment_cancelled") in kinds
            conv = (await loket.fetch(select(conversations).where(
                conversations.c.customer_id == appt["customer_id"])))[0]
            assert "appointment" not in (conv["meta"] or {})  # answered: a later "1" is not an answer again
        async with loket.rt.engine.connect() as conn:
            summary = await status_summary(conn, T0, T0 + timedelta(days=7))
            months = await monthly(conn, T0, months=2)
            rems = await reminder_summary(conn, T0, T0 + timedelta(days=7))
        assert (summary["confirmations"], summary["cancellations"], summary["no_shows"]) == (4, 3, 0)
        assert months[-1] == {"month": "2026-11", "appointments": 7, "patients": 4, "confirmed": 4,
                              "cancelled": 3, "no_show": 0, "done": 0}
        assert rems["by_status"]["sent"] == 7 and rems["answered"] == 7 and rems["by_channel"] == {"webchat": 7}
    finally:
        await loket.stop()


async def test_reschedule_offers_free_slots_and_moves(settings_factory: Any, tmp_path: Path) -> None:
    loket, tokens = await _many(settings_factory, tmp_path, 3)
    try:
        for i, (how, text) in enumerate([("digit", "2"), ("word", "ganti jadwal"), ("button", "reschedule")]):
            async with WebChatClient(loket.base_url, visitor=tokens[i]) as chat:
                offer = await _answer(chat, how, text)
                assert "pilih jadwal baru" in offer["text"]
                assert len(offer["choices"]) == 5
                assert all(c["value"].startswith("slot:") for c in offer["choices"])
                first = offer["choices"][0]
                done = await _answer(chat, "digit", "1")
                assert "sudah diganti" in done["text"]
            appt = await appointment(loket, f"M{i}")
            assert appt["status"] == "rescheduled"
            assert aware(appt["start_at"]).isoformat() == first["value"][5:]
            rems = await reminders(loket, f"M{i}")
            assert {r["status"] for r in rems.values()} <= {"pending", "skipped"}
            assert aware(rems["2h"]["due_at"]) == aware(appt["start_at"]) - timedelta(hours=2)
            kinds = [r["kind"] for r in await loket.fetch(select(touchpoints.c.kind).where(
                touchpoints.c.customer_id == appt["customer_id"]))]
            assert "appointment_reschedule_requested" in kinds and "appointment_rescheduled" in kinds
    finally:
        await loket.stop()


async def test_reschedule_without_free_slots_hands_over_to_staff(settings_factory: Any, tmp_path: Path) -> None:
    loket, _, token = await _reminded(settings_factory, tmp_path)
    try:
        async with loket.rt.engine.begin() as conn:
            await conn.execute(update(providers_t).values(working_hours={}))
        async with WebChatClient(loket.base_url, visitor=token) as chat:
            reply = await _answer(chat, "word", "reschedule")
            assert "sambungkan ke petugas" in reply["text"]
        conv = (await loket.fetch(select(conversations)))[0]
        assert conv["state"] == "queued"
        assert conv["handover"]["reason"] == "reschedule"
        assert conv["handover"]["team"] == "clinic"
    finally:
        await loket.stop()


async def test_no_answer_by_the_deadline_queues_for_staff(settings_factory: Any, tmp_path: Path) -> None:
    loket, clock, _ = await _reminded(settings_factory, tmp_path)
    try:
        await advance(loket, clock, timedelta(hours=22))  # 2h before: second reminder, still no answer
        await wait_reminder(loket, "P1", "2h", "sent")
        conv = (await loket.fetch(select(conversations)))[0]
        assert conv["state"] == "bot"
        await advance(loket, clock, timedelta(hours=1))  # 1h before: the deadline

        async def queued() -> dict[str, Any] | None:
            c = (await loket.fetch(select(conversations)))[0]
            return c if c["state"] == "queued" else None

        conv = await wait_for(queued, what="conversation queued")
        assert conv["handover"]["reason"] == "no_reply_to_reminder"
        assert "appointment_no_reply" in await _kinds(loket)
        await loket.rt.services["reminders"].tick()
        states = [k for k in await _kinds(loket) if k == "appointment_no_reply"]
        assert len(states) == 1  # escalated once
    finally:
        await loket.stop()


async def test_unrelated_message_is_not_taken_as_an_answer(settings_factory: Any, tmp_path: Path) -> None:
    loket, _, token = await _reminded(settings_factory, tmp_path)
    try:
        async with WebChatClient(loket.base_url, visitor=token) as chat:
            await _answer(chat, "word", "jam buka apotek?")
        assert (await appointment(loket, "P1"))["status"] == "booked"
    finally:
        await loket.stop()
