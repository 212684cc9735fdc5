"""The flow engine in a running Loket: web chat end to end, global commands deep inside a flow, durable
inactivity timeouts with a moved clock, restarts and flow versions, old buttons, failing handlers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import select

from bot.clock import FrozenClock
from bot.flows.models import flow_versions
from storage.models import conversations, outbox_items, touchpoints
from tests.flows.helpers import FLOW_COMPONENTS, Driver, started_runtime, texts, write_flow
from tests.support import LoketServer, WebChatClient, wait_for

TUESDAY_10_WIB = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


async def _deep_in_booking(chat: WebChatClient) -> dict[str, Any]:
    """halo → clinic → book → dentist → name → phone: waits at "when" (the fourth question)."""
    first = await chat.say("halo")
    assert "Selamat datang" in first["text"]
    n = len(chat.replies())
    await chat.choose(next(c["value"] for c in first["choices"] if c["label"].startswith("Klinik")))
    clinic = (await chat.wait_replies(n + 1))[n]
    n += 1
    await chat.choose(next(c["value"] for c in clinic["choices"] if c["label"].startswith("Buat janji")))
    service = (await chat.wait_replies(n + 1))[n]
    assert "Poli mana" in service["text"]
    n += 1
    await chat.send_text("2")  # typed number: Dokter gigi
    assert "Atas nama" in (await chat.wait_replies(n + 1))[n]["text"]
    assert "Nomor HP" in (await chat.say("Budi Santoso"))["text"]
    when = await chat.say("0812 3456 7890")
    assert "Kapan Anda ingin datang" in when["text"]
    return when


async def _settled(loket: LoketServer) -> None:
    """Every reply recorded as sent, so stopping the server leaves nothing in flight."""
    async def done() -> bool:
        rows = await loket.fetch(select(outbox_items.c.status))
        return bool(rows) and all(r["status"] == "sent" for r in rows)

    await wait_for(done, what="outbox rows sent")


async def _conversation(loket: LoketServer) -> dict[str, Any]:
    rows = await loket.fetch(select(conversations).order_by(conversations.c.id.desc()).limit(1))
    return rows[0]


async def test_web_chat_booking_and_agent_command_deep_inside_a_flow(settings_factory: Any) -> None:
    loket = LoketServer(settings_factory(LOKET_DEMO="true"), clock=FrozenClock(TUESDAY_10_WIB),
                        components=FLOW_COMPONENTS)
    await loket.start()
    try:
        async with WebChatClient(loket.base_url) as chat:
            await _deep_in_booking(chat)
            conv = await _conversation(loket)
            assert conv["flow"]["flow"] == "clinic" and conv["flow"]["node"] == "ask_when"
            assert conv["flow"]["slots"]["phone"] == "+6281234567890"
            reply = await chat.say("agen")
            assert "sambungkan ke petugas" in reply["text"]
        conv = await _conversation(loket)
        assert conv["state"] == "queued" and conv["flow"] is None
    finally:
        await loket.stop()


async def test_menu_and_back_restart_the_main_flow_from_deep_inside(settings_factory: Any) -> None:
    loket = LoketServer(settings_factory(LOKET_DEMO="true"), clock=FrozenClock(TUESDAY_10_WIB),
                        components=FLOW_COMPONENTS)
    await loket.start()
    try:
        async with WebChatClient(loket.base_url) as chat:
            await _deep_in_booking(chat)
            for word in ("menu", "kembali"):
                reply = await chat.say(word)
                assert "Silakan pilih layanan" in reply["text"]
                assert [c["label"] for c in reply["choices"]][:2] == [
                    "Klinik Sehat (janji dokter, jam buka)", "Toko Batik (status pesanan, retur)"]
                conv = await _conversation(loket)
                assert (conv["flow"]["flow"], conv["flow"]["node"]) == ("main", "welcome")
            # stop works from inside a flow too
            assert "tidak akan menerima pesan" in (await chat.say("berhenti"))["text"]
            assert (await _conversation(loket))["flow"] is None
    finally:
        await loket.stop()


async def test_inactivity_timeout_is_durable_and_moves_with_the_clock(settings_factory: Any) -> None:
    settings = settings_factory(LOKET_DEMO="true", LOKET_FLOW_TIMEOUT_POLL="0.1")
    clock = FrozenClock(TUESDAY_10_WIB)
    loket = LoketServer(settings, clock=clock, components=FLOW_COMPONENTS)
    await loket.start()
    try:
        async with WebChatClient(loket.base_url) as chat:
            await _deep_in_booking(chat)
            token = chat.visitor
            await _settled(loket)
            clock.advance(timedelta(minutes=19))
            await asyncio.sleep(0.5)
            assert (await _conversation(loket))["flow"] is not None  # 20 minutes not reached yet
    finally:
        await loket.stop()
    # the process is down when the timeout passes; a new one finds it in the database
    clock.advance(timedelta(minutes=2))
    loket = LoketServer(settings, clock=clock, components=FLOW_COMPONENTS)
    await loket.start()
    try:
        async with WebChatClient(loket.base_url, visitor=token) as chat:
            frame = await chat.wait_frame(lambda f: f["type"] == "message" and "Sesi Klinik Sehat" in f["text"])
            assert "kami tutup karena tidak ada balasan" in frame["text"]
            conv = await _conversation(loket)
            assert conv["flow"] is None and conv["state"] == "bot"
            tps = await loket.fetch(select(touchpoints).where(touchpoints.c.kind == "flow_timeout"))
            assert len(tps) == 1 and tps[0]["payload"]["node"] == "ask_when"
            # the next message is not taken as an answer to the expired question
            reply = await chat.say("besok jam 3 sore")
            assert "Kapan" not in reply["text"] and "Mohon periksa" not in reply["text"]
    finally:
        await loket.stop()


async def test_restart_keeps_the_flow_position(settings_factory: Any) -> None:
    settings = settings_factory(LOKET_DEMO="true")
    clock = FrozenClock(TUESDAY_10_WIB)
    loket = LoketServer(settings, clock=clock, components=FLOW_COMPONENTS)
    await loket.start()
    try:
        async with WebChatClient(loket.base_url) as chat:
            await _deep_in_booking(chat)
            token = chat.visitor
        await _settled(loket)
    finally:
        await loket.stop()
    loket = LoketServer(settings, clock=clock, components=FLOW_COMPONENTS)
    await loket.start()
    try:
        async with WebChatClient(loket.base_url, visitor=token) as chat:
            reply = await chat.say("besok jam 3 sore")
            assert "Mohon periksa: Budi Santoso, poli Dokter gigi, 25-11-2026 15:00" in reply["text"]
    finally:
        await loket.stop()


FLOW_V1 = """
id: survey
version: 1
start: q1
triggers: [survey]
nodes:
  q1:
    type: ask
    save: score
    text: {id: "V1 nilai 1-5?", en: "V1 score 1-5?"}
    validate: {type: number, min: 1, max: 5}
    next: thanks
  thanks:
    type: end
    text: {id: "V1 terima kasih {score}", en: "V1 thanks {score}"}
"""
FLOW_V2 = """
id: survey
version: 2
start: intro
triggers: [survey]
nodes:
  intro:
    type: ask
    save: name
    text: {id: "V2 nama?", en: "V2 name?"}
    next: bye
  bye:
    type: end
    text: {id: "V2 dadah {name}", en: "V2 bye {name}"}
"""


async def test_conversations_keep_their_flow_version_across_edits_and_restarts(
        settings_factory: Any, tmp_path: Path) -> None:
    folder = tmp_path / "flows"
    write_flow(folder, "survey.yaml", FLOW_V1)
    settings = settings_factory(LOKET_FLOWS=str(folder), LOKET_DEFAULT_FLOW="survey")
    rt = await started_runtime(settings)
    old = Driver(rt)
    try:
        assert "V1 nilai" in texts(await old.send("survey"))
    finally:
        await rt.stop()
    write_flow(folder, "survey.yaml", FLOW_V2)  # the file moves on; v1 only lives in the database now
    rt = await started_runtime(settings)
    old.rt = rt
    try:
        assert "V1 terima kasih 4" in texts(await old.send("4"))
        new = Driver(rt)
        assert "V2 nama?" in texts(await new.send("survey"))
        assert "V2 dadah Ani" in texts(await new.send("Ani"))
        async with rt.engine.connect() as conn:
            stored = sorted((r[0], r[1]) for r in await conn.execute(
                select(flow_versions.c.flow_id, flow_versions.c.version)))
        assert stored == [("survey", 1), ("survey", 2)]
    finally:
        await rt.stop()


async def test_old_buttons_and_invalid_answers_are_handled_gracefully(settings_factory: Any) -> None:
    rt = await started_runtime(settings_factory(LOKET_DEMO="true"), FrozenClock(TUESDAY_10_WIB))
    try:
        d = Driver(rt)
        menu = await d.send("halo")
        main_choices = menu[-1]["choices"]
        await d.press("Toko Batik")
        assert "Berapa nomor pesanan" in texts(await d.press("Cek status"))
        # a button of a menu that no longer exists in this flow: say so and ask the current question again
        reply = texts(await d.send("Lama", payload="f:shop:gone:x"))
        assert "sudah tidak berlaku" in reply and "Berapa nomor pesanan" in reply
        # a button from the first menu, pressed now: honoured (it is still a valid menu)
        clinic_value = next(c["value"] for c in main_choices if c["label"].startswith("Klinik"))
        assert "Klinik Sehat — ada yang bisa" in texts(await d.send("Klinik", payload=clinic_value))
        assert (await d.conversation())["flow"]["flow"] == "clinic"
        # three wrong answers to a menu with on_fail: hand over to the front desk
        for _ in range(2):
            assert "pilihan itu tidak ada" in texts(await d.send("pizza"))
        last = texts(await d.send("pizza"))
        assert "kami hubungkan dengan petugas kami" in last
        conv = await d.conversation()
        assert conv["state"] == "queued" and conv["handover"]["reason"] == "customer_asked"
        assert len(await d.touchpoints("flow_invalid_answer")) == 3
        assert len(await d.touchpoints("flow_stale_button")) == 2
    finally:
        await rt.stop()


async def _orders_server(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/orders/{no}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    return runner, f"http://127.0.0.1:{port}/orders"


async def test_order_status_from_an_http_endpoint(settings_factory: Any) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.match_info["no"])
        if request.match_info["no"] == "SHP-777":
            return web.json_response({"status": "delivered", "items": [{"name": "Batik Tulis"}], "total": 900000})
        return web.json_response({"error": "not found"}, status=404)

    runner, url = await _orders_server(handler)
    rt = await started_runtime(settings_factory(LOKET_DEMO="true", LOKET_ORDERS_URL=url))
    try:
        d = Driver(rt, language="en")
        await d.send("order status please")
        await d.press("Check my order")
        assert "Order SHP-777 (Batik Tulis): delivered." in texts(await d.send("shp-777"))
        await d.press("Check another")
        assert "could not find order INV-1001" in texts(await d.send("INV-1001"))
        assert seen == ["SHP-777", "INV-1001"]
    finally:
        await rt.stop()
        await runner.cleanup()


async def test_a_failing_or_slow_handler_gets_a_polite_fallback_and_a_touchpoint(
        settings_factory: Any, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.match_info["no"] == "SLOW-1":
            await asyncio.sleep(1.5)
        return web.json_response({"error": "boom"}, status=500)

    runner, url = await _orders_server(handler)
    folder = tmp_path / "flows"
    write_flow(folder, "orders.yaml", """
id: orders
version: 1
start: ask
triggers: [order]
nodes:
  ask:
    type: ask
    save: order_no
    text: {id: "Nomor?", en: "Number?"}
    next: lookup
  lookup:
    type: call
    handler: order_status
    args: {order_no: "{order_no}"}
    timeout: 0.5
    next: done
  done:
    type: end
    text: {id: "Status {lookup.status}", en: "Status {lookup.status}"}
""")
    rt = await started_runtime(settings_factory(LOKET_FLOWS=str(folder), LOKET_ORDERS_URL=url))
    try:
        for number in ("BAD-1", "SLOW-1"):
            d = Driver(rt)
            await d.send("order")
            reply = texts(await d.send(number))
            # "order" reads as English: the fallback is in English, and a person takes over — never a silent stall
            assert "our system cannot handle this request right now" in reply
            assert "you are in the queue" in reply
            conv = await d.conversation()
            assert conv["state"] == "queued" and conv["handover"]["reason"] == "handler_failed"
            errors = await d.touchpoints("flow_error")
            assert len(errors) == 1
            assert errors[0]["payload"]["call"] == "order_status"
            assert errors[0]["payload"]["error"] == ("timed out" if number == "SLOW-1"
                                                    else "order service answered HTTP 500")
    finally:
        await rt.stop()
        await runner.cleanup()


async def test_business_hours_branch_with_holidays(settings_factory: Any) -> None:
    christmas_10_wib = datetime(2026, 12, 25, 3, 0, tzinfo=UTC)
    for at, expected in ((TUESDAY_10_WIB, "BUKA"), (christmas_10_wib, "TUTUP"),
                         (TUESDAY_10_WIB + timedelta(hours=11), "TUTUP")):
        rt = await started_runtime(settings_factory(LOKET_DEMO="true"), FrozenClock(at))
        try:
            d = Driver(rt)
            await d.send("jam buka klinik")
            assert f"Klinik sedang {expected}" in texts(await d.press("Jam buka"))
        finally:
            await rt.stop()


async def test_language_choice_updates_the_customer(settings_factory: Any) -> None:
    rt = await started_runtime(settings_factory(LOKET_DEMO="true"))
    try:
        d = Driver(rt)
        await d.send("halo")
        await d.press("English")
        assert "Welcome to Loket Demo" in texts(await d.press("English"))
        from storage.models import customers

        async with rt.engine.connect() as conn:
            lang = (await conn.execute(select(customers.c.language))).scalar_one()
        assert lang == "en"
        assert (await d.conversation())["language"] == "en"
    finally:
        await rt.stop()


async def test_loket_chat_starts_a_named_flow(settings_factory: Any) -> None:
    rt = await started_runtime(settings_factory(LOKET_DEMO="true"))
    try:
        d = Driver(rt)
        reply = await d.send(kind="start", meta={"start_flow": "shop"})
        assert "Toko Batik — ada yang bisa" in texts(reply)
    finally:
        await rt.stop()


async def test_timeout_sweep_skips_conversations_that_moved_on(settings_factory: Any) -> None:
    clock = FrozenClock(TUESDAY_10_WIB)
    rt = await started_runtime(settings_factory(LOKET_DEMO="true"), clock)
    try:
        service = rt.services["flows.service"]
        active = Driver(rt)
        await active.send("halo")
        idle = Driver(rt)
        await idle.send("halo")
        clock.advance(timedelta(minutes=31))  # the main menu times out after 30 minutes
        await active.press("Toko")  # answers after the timeout: starts afresh, new expiry
        assert await service.sweep_timeouts() == 1
        assert (await idle.conversation())["flow"] is None
        assert (await active.conversation())["flow"] is not None
        assert await service.sweep_timeouts() == 0
        assert "Sesi ini kami tutup" in texts(await idle.replies())
    finally:
        await rt.stop()
