"""Console over HTTP: login, escalation from web chat, reply on the customer's socket, CSRF, roles, throttling,
TOTP, auto-assignment with capacity and presence, SLA breach with an injected clock, CSAT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import select

from agent_console.escalation import AgentSlot, is_frustrated, is_open, pick_agent, sla_state
from bot.clock import FrozenClock
from storage.models import audit_log, conversations, touchpoints
from tests.console.helpers import Agent, make_agent, make_team
from tests.support import LoketServer, WebChatClient, wait_for

T0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)  # a Monday, 10:00 in Jakarta


@pytest.fixture
async def server(settings_factory: Any) -> AsyncIterator[LoketServer]:
    s = LoketServer(settings_factory(LOKET_CONSOLE_TICK="0.1"), clock=FrozenClock(T0))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def conv_of(server: LoketServer) -> dict[str, Any]:
    rows = await server.fetch(select(conversations).order_by(conversations.c.id.desc()).limit(1))
    return rows[0]


def test_pure_decisions() -> None:
    slots = [AgentSlot(1, "online", 1, 1, 0), AgentSlot(2, "offline", 5, 0, 0), AgentSlot(3, "online", 2, 0, 5),
             AgentSlot(4, "online", 2, 1, 2)]
    assert pick_agent(slots).id == 4  # type: ignore[union-attr]  # 1 is full, 2 offline, 4 waited longest
    assert pick_agent(slots[:2]) is None
    assert is_frustrated("saya kecewa sekali") and is_frustrated("WHERE IS MY ORDER") and not is_frustrated("halo")
    hours = {"timezone": "Asia/Jakarta", "weekly": {"mon": [["08:00", "17:00"]]}, "holidays": []}
    assert is_open(hours, T0) and not is_open(hours, T0 + timedelta(hours=8))
    assert not is_open({**hours, "holidays": ["2026-11-23"]}, T0)
    conv = {"queued_at": T0, "first_response_due": T0 + timedelta(minutes=60), "first_response_at": None,
            "resolution_due": None, "resolved_at": None}
    assert sla_state(conv, T0) == "ok"
    assert sla_state(conv, T0 + timedelta(minutes=55)) == "warning"
    assert sla_state(conv, T0 + timedelta(minutes=61)) == "breached"


async def test_escalate_reply_resolve_csat(server: LoketServer) -> None:
    await make_agent(server, "ana@example.com")
    agent = Agent(server)
    try:
        assert (await agent.login("ana@example.com")).status == 303
        async with WebChatClient(server.base_url) as chat:
            await chat.say("halo")
            await chat.send_text("0")
            await chat.wait_frame(lambda f: f.get("type") == "message" and "antrean" in f.get("text", "").lower())
            conv = await conv_of(server)
            assert conv["state"] == "queued"
            status, html = await agent.get("/console?view=unassigned")
            assert status == 200 and f"/console/c/{conv['id']}" in html
            status, html = await agent.get(f"/console/c/{conv['id']}")
            assert status == 200 and "customer_asked" in html  # why the bot handed over
            n = len(chat.replies())
            status, _ = await agent.post(f"/console/c/{conv['id']}/reply", {"text": "Halo, saya Ana <b>CS</b>"})
            assert status == 303
            reply = await chat.wait_frame(lambda f: f.get("type") == "message" and "Ana" in f.get("text", ""))
            assert reply["text"] == "Halo, saya Ana <b>CS</b>"
            conv = await conv_of(server)
            assert conv["state"] == "assigned" and conv["first_response_at"] is not None
            status, _ = await agent.post(f"/console/c/{conv['id']}/resolve", {})
            assert status == 303
            csat = await chat.wait_frame(lambda f: f.get("type") == "message" and "1" in str(f.get("choices")),
                                         start=n)
            assert [c["value"] for c in csat["choices"]] == ["1", "2", "3", "4", "5"]
            await chat.say("5")
            await chat.say("Cepat sekali, terima kasih")
            conv = await wait_for(lambda: _csat(server), what="csat stored")
            assert conv["csat_score"] == 5 and conv["csat_comment"] == "Cepat sekali, terima kasih"
            assert conv["state"] == "bot"  # back to the bot
            status, html = await agent.get(f"/console/c/{conv['id']}")
            assert "★ 5" in html
        sup_id = await make_agent(server, "sup@example.com", role="supervisor")
        assert sup_id
        sup = Agent(server)
        await sup.login("sup@example.com")
        status, html = await sup.get("/console/dashboard")
        assert status == 200 and 'id="csat-avg">5.0<' in html
        await sup.close()
    finally:
        await agent.close()


async def _csat(server: LoketServer) -> dict[str, Any] | None:
    conv = await conv_of(server)
    return conv if conv["csat_comment"] else None


async def test_csrf_roles_and_audit(server: LoketServer) -> None:
    await make_agent(server, "budi@example.com")
    agent = Agent(server)
    try:
        await agent.login("budi@example.com")
        async with WebChatClient(server.base_url) as chat:
            await chat.say("halo")
            await chat.say("0")
        conv = await conv_of(server)
        status, _ = await agent.post(f"/console/c/{conv['id']}/reply", {"text": "x"}, csrf=False)
        assert status == 403
        status, _ = await agent.post(f"/console/c/{conv['id']}/reply", {"text": "x", "_csrf": "wrong"}, csrf=False)
        assert status == 403
        async with agent.session.get(server.base_url + "/console/ws", params={"csrf": "nope"}) as resp:
            assert resp.status == 403
        for path in ("/console/admin", "/console/dashboard", "/console/admin/canned"):
            status, _ = await agent.get(path)
            assert status == 403, path
        # another team's conversation
        team = await make_team(server, "billing")
        async with server.rt.engine.begin() as conn:
            await conn.execute(conversations.update().where(conversations.c.id == conv["id"]).values(team_id=team))
        status, _ = await agent.get(f"/console/c/{conv['id']}")
        assert status == 403
        denied = await server.fetch(select(audit_log).where(audit_log.c.action == "access_denied"))
        assert {d["object_type"] for d in denied} >= {"admin", "dashboard", "conversation"}
        assert all(d["actor"] == "budi@example.com" for d in denied)
    finally:
        await agent.close()


async def test_login_throttling_and_totp(server: LoketServer) -> None:
    secret = pyotp.random_base32()
    await make_agent(server, "mfa@example.com", totp=secret)
    a = Agent(server)
    try:
        assert (await a.login("mfa@example.com")).status == 401  # no code
        assert (await a.login("mfa@example.com", totp="000000" if pyotp.TOTP(secret).at(T0) != "000000"
                              else "111111")).status == 401
        good = pyotp.TOTP(secret).at(server.rt.clock.now())
        assert (await a.login("mfa@example.com", totp=good)).status == 303
        await make_agent(server, "victim@example.com")
        b = Agent(server)
        for _ in range(5):
            assert (await b.login("victim@example.com", password="wrong password")).status == 401
        assert (await b.login("victim@example.com")).status == 429  # locked even with the right password
        server.rt.clock.advance(timedelta(minutes=16))
        assert (await b.login("victim@example.com")).status == 303
        await b.close()
    finally:
        await a.close()


async def test_auto_assignment_capacity_presence_and_sla(server: LoketServer) -> None:
    a1 = await make_agent(server, "one@example.com", max_chats=1)
    a2 = await make_agent(server, "two@example.com", max_chats=5)
    one = Agent(server)
    try:
        await one.login("one@example.com")
        ws = await one.ws()  # only agent one is online
        await wait_for(lambda: _presence(server, a1), what="online")
        chats = [WebChatClient(server.base_url) for _ in range(3)]
        for c in chats:
            await c.connect()
            await c.say("halo")
            await c.say("0")
        rows = await wait_for(lambda: _assigned(server, 1), what="first assignment")
        assert rows[0]["assignee_id"] == a1
        await asyncio.sleep(0.5)
        queued = await server.fetch(select(conversations).where(conversations.c.state == "queued"))
        assert len(queued) == 2  # one is full (capacity 1), two is offline
        # the customer with someone ahead of them is told their position
        await chats[2].wait_frame(lambda f: "antrean nomor 2" in f.get("text", ""))
        # SLA: normal priority → first response 60 min; move the injected clock past it
        server.rt.clock.advance(timedelta(minutes=61))
        await ws.send_json({"type": "ping"})
        breached = await wait_for(lambda: server.fetch(select(touchpoints).where(
            touchpoints.c.kind == "sla_breached")), what="sla breach")
        assert len(breached) == 3
        status, html = await one.get("/console?view=all")
        assert "SLA breached" in html and 'id="breached-count">' in html
        # agent two comes online and takes the waiting one
        two = Agent(server)
        await two.login("two@example.com")
        ws2 = await two.ws()
        rows = await wait_for(lambda: _assigned(server, 3), what="the rest assigned to two")
        assert sorted(r["assignee_id"] for r in rows) == sorted([a1, a2, a2])
        await ws2.close()
        await two.close()
        await ws.close()
        for c in chats:
            await c.close()
    finally:
        await one.close()


async def test_presence_stays_online_across_page_changes(server: LoketServer) -> None:
    """Changing pages closes the agent's socket and opens another at the same moment; whichever the server handles
    first, the agent stays online while a page is open. With several pages, one in front is enough; with only
    background pages the agent is away, with none offline."""
    aid = await make_agent(server, "nav@example.com")
    agent = Agent(server)
    try:
        await agent.login("nav@example.com")
        ws = await agent.ws()
        await wait_for(lambda: _presence(server, aid), what="online")
        for i in range(20):
            opening = asyncio.create_task(agent.ws())
            await ws.close()
            ws = await opening
            await asyncio.sleep(0.2)  # both sockets handled: nothing in this test pings
            assert await _presence(server, aid), f"offline with a page open, after page change {i + 1}"
        # a second page in a background tab reports "away": the page in front keeps the agent online
        background = await agent.ws()
        await background.send_json({"type": "ping", "presence": "away"})
        await asyncio.sleep(0.2)
        assert await _presence(server, aid)
        await ws.close()
        await wait_for(lambda: _presence(server, aid, "away"), what="away with only a background page open")
        await background.close()
        await wait_for(lambda: _presence(server, aid, "offline"), what="offline after the last page closed")
    finally:
        await agent.close()


async def _presence(server: LoketServer, aid: int, state: str = "online") -> bool:
    from storage.models import agents
    return await server.scalar(select(agents.c.presence).where(agents.c.id == aid)) == state


async def _assigned(server: LoketServer, n: int) -> list[dict[str, Any]] | None:
    rows = await server.fetch(select(conversations).where(conversations.c.state == "assigned"))
    return rows if len(rows) >= n else None


async def test_customer_export_merge_erase_and_frustration(server: LoketServer) -> None:
    await make_agent(server, "sup2@example.com", role="supervisor")
    sup = Agent(server)
    try:
        await sup.login("sup2@example.com")
        async with WebChatClient(server.base_url) as c1, WebChatClient(server.base_url) as c2:
            await c1.say("halo")
            await c1.say("0")
            await c1.send_text("SAYA SANGAT KECEWA, PESANAN BELUM DATANG")  # queued: the bot stays quiet
            await c2.say("halo dari perangkat lain")
        conv = await wait_for(lambda: _prio(server), what="priority raised")
        cust = conv["customer_id"]
        status, body = await sup.get(f"/console/customers/{cust}/export")
        assert status == 200 and "KECEWA" in body
        other = [r for r in await server.fetch(select(conversations)) if r["customer_id"] != cust][0]["customer_id"]
        status, _ = await sup.post(f"/console/customers/{cust}/merge", {"source_id": other})
        assert status == 303
        assert len({r["customer_id"] for r in await server.fetch(select(conversations))}) == 1
        status, _ = await sup.post(f"/console/customers/{cust}/erase", {})
        assert status == 303
        status, body = await sup.get(f"/console/customers/{cust}/export")
        assert "KECEWA" not in body and "halo dari" not in body
        assert await server.fetch(select(audit_log).where(audit_log.c.action == "customer.erase"))
    finally:
        await sup.close()


async def _prio(server: LoketServer) -> dict[str, Any] | None:
    rows = await server.fetch(select(conversations).where(conversations.c.priority == "high"))
    return rows[0] if rows else None


async def test_a_long_timeline_shows_the_newest_items_and_links_to_the_rest(server: LoketServer) -> None:
    from tests.flows.helpers import Driver

    await make_agent(server, "sup3@example.com", role="supervisor")
    sup = Agent(server)
    try:
        await sup.login("sup3@example.com")
        server.rt.services["console"].timeline_items = 20  # 120 by default
        d = Driver(server.rt)
        await d.send("halo")
        await d.send("0")
        for i in range(30):  # queued: the bot stays quiet, every message is for the agent
            await d.send(f"pesan nomor {i}")
        conv = await conv_of(server)
        status, html = await sup.get(f"/console/c/{conv['id']}?partial=1")
        assert status == 200 and html.count("<li") == 20 + 1 and "pesan nomor 29<" in html  # + the link
        assert "pesan nomor 9<" not in html and 'id="timeline-older"' in html
        status, html = await sup.get(f"/console/c/{conv['id']}?history=all")
        assert "pesan nomor 0<" in html and "halo<" in html and 'id="timeline-older"' not in html
        assert 'class="event kind-delivery' not in html  # a message shows its own delivery status
    finally:
        await sup.close()


HANDOVER_FLOW = """
id: klinik
version: 1
start: to_desk
triggers: [dokter]
nodes:
  to_desk:
    type: handover
    team: Klinik
    reason: ask_the_clinic
    text: {id: "Kami sambungkan ke tim klinik.", en: "We are connecting you to the clinic team."}
"""


async def test_outside_business_hours_the_customer_is_told_and_assignment_waits(settings_factory: Any,
                                                                              tmp_path: Any) -> None:
    from tests.flows.helpers import write_flow

    folder = tmp_path / "flows"
    write_flow(folder, "klinik.yaml", HANDOVER_FLOW)
    write_flow(folder, "lain.yaml", HANDOVER_FLOW.replace("id: klinik", "id: lain").replace("[dokter]", "[lain]"))
    monday_evening = T0 + timedelta(hours=10)  # 20:00 in Jakarta
    server = LoketServer(settings_factory(LOKET_CONSOLE_TICK="0.1", LOKET_FLOWS=str(folder)),
                         clock=FrozenClock(monday_evening))
    await server.start()
    agent = Agent(server)
    try:
        hours = {"timezone": "Asia/Jakarta", "weekly": {d: [["08:00", "17:00"]] for d in ("mon", "tue")},
                 "holidays": []}
        team = await make_team(server, "Klinik", hours)
        aid = await make_agent(server, "dina@example.com", team=team)
        await agent.login("dina@example.com")
        ws = await agent.ws()
        await wait_for(lambda: _presence(server, aid), what="online")
        async with WebChatClient(server.base_url) as chat:
            await chat.say("halo")
            await chat.send_text("mau tanya dokter")
            offline = await chat.wait_frame(lambda f: "luar jam kerja" in f.get("text", ""))
            assert "mon 08:00-17:00" in offline["text"] and "Asia/Jakarta" in offline["text"]
            await chat.wait_frame(lambda f: "Kami akan membalas lewat web chat" in f.get("text", ""))
            await asyncio.sleep(0.5)
            conv = await conv_of(server)
            assert conv["state"] == "queued" and conv["team_id"] == team and conv["assignee_id"] is None
            server.rt.clock.advance(timedelta(hours=12, minutes=30))  # Tuesday 08:30 in Jakarta
            await ws.send_json({"type": "ping"})  # the agent is still there
            rows = await wait_for(lambda: _assigned(server, 1), what="assignment once the team opens")
            assert rows[0]["assignee_id"] == aid
        await ws.close()
    finally:
        await agent.close()
        await server.stop()
