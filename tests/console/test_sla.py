"""SLA policies: the admin page (roles, CSRF, validation, audit), targets per priority and per team, due times
that follow priority and policy changes, and one SLA clock per episode (a re-escalation starts a new one)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from agent_console.escalation import sla_state
from agent_console.sla import (
    DurationError,
    SlaPolicies,
    due_times,
    format_duration,
    parse_duration,
    read_form,
)
from bot.clock import FrozenClock, aware
from storage.models import audit_log, conversations, touchpoints
from tests.console.helpers import Agent, make_agent, make_team
from tests.flows.helpers import Driver
from tests.support import LoketServer, wait_for

T0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
COMPONENTS = ["bot.channels.webchat", "bot.health", "agent_console.escalation", "agent_console.web"]


def full_form(**over: str) -> dict[str, str]:
    base = {"default.urgent.fr": "15m", "default.urgent.res": "4h", "default.high.fr": "30", "default.high.res": "8h",
            "default.normal.fr": "1h", "default.normal.res": "1d", "default.low.fr": "4h", "default.low.res": "2d"}
    return {**base, **over}


def test_durations_and_the_form() -> None:
    assert [parse_duration(x) for x in ("90", "45m", "4h", "1h 30m", "2d", "1d2h", "2 jam", "30 menit")] == [
        90, 45, 240, 90, 2880, 1560, 120, 30]
    for bad, why in (("", "empty"), ("soon", "is not a duration"), ("0", "more than 0"), ("91d", "at most 90 days"),
                     ("4h 5x", "is not a duration")):
        with pytest.raises(DurationError, match=why):
            parse_duration(bad)
    assert [format_duration(m) for m in (45, 90, 1440, 1530)] == ["45m", "1h 30m", "1d", "1d 1h 30m"]
    form = read_form(full_form(**{"team7.urgent.fr": "5m", "team7.urgent.res": "1h"}), [7])
    assert not form.errors
    assert form.policies.minutes("urgent", 7) == (5, 60) and form.policies.minutes("high", 7) == (30, 480)
    assert form.policies.minutes("urgent") == (15, 240)
    bad = read_form(full_form(**{"default.high.fr": "9h", "team7.low.fr": "1h"}), [7])
    assert bad.errors == {"default.high.fr": "first response must not be later than resolution",
                          "team7.low.res": "empty"}
    assert bad.values["default.high.fr"] == "9h"  # what was typed is shown again


def test_due_times_follow_the_episode_priority_and_team() -> None:
    policies = SlaPolicies({"normal": (60, 600), "high": (30, 300)}, {3: {"high": (10, 100)}})
    conv: dict[str, Any] = {"queued_at": T0, "priority": "normal", "team_id": None, "meta": {},
                            "first_response_due": None, "resolution_due": None, "first_response_at": None}
    v = due_times(conv, policies)
    assert v["first_response_due"] == T0 + timedelta(minutes=60) and v["meta"]["sla"]["start"] == T0.isoformat()
    conv.update(v)
    assert due_times(conv, policies) == {}  # up to date
    transferred = {**conv, "queued_at": T0 + timedelta(minutes=20), "priority": "high", "team_id": 3,
                   "handover": {"reason": "transferred", "bot_reason": "customer_asked"}}
    v = due_times(transferred, policies)  # same episode: the clock still starts at T0
    assert v == {"first_response_due": T0 + timedelta(minutes=10), "resolution_due": T0 + timedelta(minutes=100)}
    # resolved elsewhere (the REST API) without ending the episode, then the bot queues it again: a new one
    requeued = {**conv, "queued_at": T0 + timedelta(days=2), "handover": {"reason": "customer_asked"}}
    v = due_times(requeued, policies)
    assert v["meta"]["sla"] == {"start": (T0 + timedelta(days=2)).isoformat()}
    assert v["first_response_due"] == T0 + timedelta(days=2, minutes=60)
    ended = {**conv, "meta": {"sla": {"start": T0.isoformat(), "ended": T0.isoformat()}, "sla_breached": "x"},
             "queued_at": T0 + timedelta(days=1), "first_response_at": T0 + timedelta(minutes=5)}
    v = due_times(ended, policies)  # a new episode: new start, the old first response does not count
    assert v["meta"]["sla"] == {"start": (T0 + timedelta(days=1)).isoformat()} and "sla_breached" not in v["meta"]
    assert v["first_response_at"] is None and v["first_response_due"] == T0 + timedelta(days=1, minutes=60)


@pytest.fixture
async def server(settings_factory: Any) -> AsyncIterator[LoketServer]:
    s = LoketServer(settings_factory(LOKET_CONSOLE_TICK="0.1", LOKET_DEMO="false"), clock=FrozenClock(T0),
                    components=COMPONENTS)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def due(server: LoketServer, conv_id: int) -> tuple[datetime | None, datetime | None]:
    row = (await server.fetch(select(conversations).where(conversations.c.id == conv_id)))[0]
    return aware(row["first_response_due"]), aware(row["resolution_due"])


async def dues_become(server: LoketServer, conv_id: int, fr: int, res: int) -> None:
    start = (await server.fetch(select(conversations.c.queued_at).where(conversations.c.id == conv_id)))[0]
    want = (T0 + timedelta(minutes=fr), T0 + timedelta(minutes=res))
    assert aware(start["queued_at"]) == T0

    async def check() -> bool:
        return await due(server, conv_id) == want

    await wait_for(check, what=f"due times {want}")


async def test_admin_edits_policies_and_open_conversations_follow(server: LoketServer) -> None:
    team = await make_team(server, "billing")
    await make_agent(server, "root@example.com", role="admin")
    await make_agent(server, "sup@example.com", role="supervisor")
    admin, sup = Agent(server), Agent(server)
    try:
        await admin.login("root@example.com")
        await sup.login("sup@example.com")
        assert (await sup.get("/console/admin/sla"))[0] == 403
        assert (await sup.post("/console/admin/sla", full_form()))[0] == 403
        denied = await server.fetch(select(audit_log).where(audit_log.c.action == "access_denied"))
        assert [(d["actor"], d["object_type"]) for d in denied] == [("sup@example.com", "sla")] * 2
        status, html = await admin.get("/console/admin/sla")
        assert status == 200 and 'name="default.normal.fr" id="default-normal-fr" value="1h"' in html
        assert f'name="team{team}.urgent.fr"' in html

        a, b = Driver(server.rt), Driver(server.rt)
        for d in (a, b):
            await d.send("halo")
            await d.send("0")
        ca, cb = (await a.conversation())["id"], (await b.conversation())["id"]
        async with server.rt.engine.begin() as conn:
            await conn.execute(update(conversations).where(conversations.c.id == cb).values(team_id=team))
        await dues_become(server, ca, 60, 1440)  # the defaults until an admin says otherwise

        # refused: no CSRF, then a bad field (nothing saved, typed text kept)
        assert (await admin.post("/console/admin/sla", full_form(), csrf=False))[0] == 403
        status, html = await admin.post("/console/admin/sla", full_form(**{"default.normal.fr": "sebentar"}))
        assert status == 400 and "is not a duration" in html and 'value="sebentar"' in html
        assert not await server.fetch(select(audit_log).where(audit_log.c.action == "admin.sla.update"))

        form = full_form(**{"default.normal.fr": "20m", "default.normal.res": "2h",
                            f"team{team}.normal.fr": "5m", f"team{team}.normal.res": "30m"})
        status, _ = await admin.post("/console/admin/sla", form)
        assert status == 303
        await dues_become(server, ca, 20, 120)
        await dues_become(server, cb, 5, 30)  # the team's own target
        entry = (await server.fetch(select(audit_log).where(audit_log.c.action == "admin.sla.update")))[0]
        assert entry["actor"] == "root@example.com"
        assert entry["after"]["default"]["normal"] == [20, 120]
        assert entry["after"]["teams"][str(team)] == {"normal": [5, 30]}
        status, html = await admin.get("/console/admin/sla?saved=1")
        assert 'id="sla-saved"' in html and f'name="team{team}.normal.fr" id="team{team}-normal-fr" value="5m"' in html

        # raising the priority moves the due times too
        async with server.rt.engine.begin() as conn:
            await conn.execute(update(conversations).where(conversations.c.id == ca).values(priority="urgent"))
        await dues_become(server, ca, 15, 240)

        # the clock passes the team's 5 minutes: a breach, counted once
        server.rt.clock.advance(timedelta(minutes=6))
        breached = await wait_for(lambda: server.fetch(select(touchpoints).where(
            touchpoints.c.kind == "sla_breached")), what="breach")
        assert [t["conversation_id"] for t in breached] == [cb]
    finally:
        await admin.close()
        await sup.close()


async def test_a_new_escalation_starts_a_new_sla_clock(server: LoketServer) -> None:
    await make_agent(server, "ana@example.com")
    ana = Agent(server)
    try:
        await ana.login("ana@example.com")
        d = Driver(server.rt)
        await d.send("halo")
        await d.send("0")
        conv = await d.conversation()
        await wait_for(lambda: _has_due(server, conv["id"]), what="due times")
        assert (await ana.post(f"/console/c/{conv['id']}/reply", {"text": "Halo"}))[0] == 303
        server.rt.clock.advance(timedelta(hours=30))  # long after the first episode's resolution target
        await ana.login("ana@example.com")  # the console session lasted 12 hours
        assert (await ana.post(f"/console/c/{conv['id']}/resolve", {"csat": "0"}))[0] == 303
        await d.send("halo lagi")  # within the reopen window: same conversation, back with the bot
        await d.send("0")
        again = await d.conversation()
        assert again["id"] == conv["id"] and again["state"] == "queued"

        async def fresh() -> bool:
            fr, _ = await due(server, conv["id"])
            return fr == server.rt.clock.now() + timedelta(minutes=60)

        await wait_for(fresh, what="a new first-response target")
        row = (await server.fetch(select(conversations).where(conversations.c.id == conv["id"])))[0]
        assert row["first_response_at"] is None  # the first episode's answer does not count
        await server.rt.services["escalation"].tick()
        # the first episode ran past its resolution target (one breach); the new one starts clean
        assert len(await server.fetch(select(touchpoints).where(touchpoints.c.kind == "sla_breached"))) == 1
        row = (await server.fetch(select(conversations).where(conversations.c.id == conv["id"])))[0]
        assert sla_state(row, server.rt.clock.now()) == "ok" and not row["meta"].get("sla_breached")
        status, html = await ana.get(f"/console/c/{conv['id']}")
        assert status == 200 and 'id="sla-badge"' not in html
    finally:
        await ana.close()


async def _has_due(server: LoketServer, conv_id: int) -> bool:
    return (await due(server, conv_id))[0] is not None


async def test_resolving_late_counts_the_breach_even_before_any_tick(settings_factory: Any) -> None:
    """The breach of a target the conversation ran past is counted when it is resolved, not only when a tick
    happens to look at it in between (a tick once an hour here: none runs after the clock moves)."""
    from bot.effects import Custom, SetState
    from bot.outbound import act_on_conversation

    s = LoketServer(settings_factory(LOKET_CONSOLE_TICK="3600", LOKET_SLA_SCAN_SECONDS="3600", LOKET_DEMO="false"),
                    clock=FrozenClock(T0), components=COMPONENTS)
    await s.start()
    try:
        d = Driver(s.rt)
        await d.send("halo")
        await d.send("0")  # escalated
        conv = await d.conversation()
        await s.rt.services["escalation"].tick()  # sets the due times
        assert await _has_due(s, conv["id"])
        s.rt.clock.advance(timedelta(hours=30))
        breaches = select(touchpoints).where(touchpoints.c.kind == "sla_breached")
        assert not await s.fetch(breaches)  # no tick has looked since
        await act_on_conversation(s.rt, conv["id"], [Custom("console.close_sla"), SetState("resolved", reason="x")])
        found = await s.fetch(breaches)
        assert [t["conversation_id"] for t in found] == [conv["id"]]
        await s.rt.services["escalation"].tick()  # a tick afterwards does not count it again
        assert len(await s.fetch(breaches)) == 1
    finally:
        await s.stop()
