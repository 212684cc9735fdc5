"""Repeated failures raise the priority and the handover shows what failed: knowledge-base misses, "not helpful"
feedback, invalid answers in a flow. The real pipeline, router, knowledge base (demo articles) and flow engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from agent_console.failures import (
    ANSWERED,
    FAILURE,
    NEUTRAL,
    SUCCESS,
    UNHELPFUL,
    classify,
    next_streak,
    threshold_from,
)
from bot.effects import Decision, Touch
from knowledge_base import DEMO_PATH
from storage.models import touchpoints
from tests.console.helpers import Agent, make_agent
from tests.flows.helpers import Driver, texts, write_flow
from tests.support import LoketServer

COMPONENTS = ["bot.channels.webchat", "bot.health", "bot.flows.component", "knowledge_base",
              "agent_console.escalation", "agent_console.web"]
NONSENSE = ["xqzv blorft frimble", "grunkle vapsidoo", "wibbly zorp quanx"]
ORDER_FLOW = """
id: nomor
version: 1
start: ask
triggers: [pesanan]
nodes:
  ask:
    type: ask
    save: order
    validate: number
    max_attempts: 3
    text: {id: "Berapa nomor pesanan Anda?", en: "What is your order number?"}
    next: done
  done:
    type: end
    text: {id: "Terima kasih, pesanan {order} kami cek.", en: "Thanks, we will check order {order}."}
"""

OTHER_FLOW = """
id: salam
version: 1
start: hi
triggers: [salam]
nodes:
  hi:
    type: end
    text: {id: "Salam kembali!", en: "Hello to you too!"}
"""  # two flows, so neither starts by itself on a new conversation


@pytest.fixture
async def server(settings_factory: Any, tmp_path: Path) -> AsyncIterator[LoketServer]:
    folder = tmp_path / "flows"
    write_flow(folder, "nomor.yaml", ORDER_FLOW)
    write_flow(folder, "salam.yaml", OTHER_FLOW)
    s = LoketServer(settings_factory(LOKET_KB=str(DEMO_PATH), LOKET_KB_SEMANTIC="off", LOKET_FLOWS=str(folder),
                                     LOKET_DEMO="false", LOKET_CONSOLE_TICK="0.2"), components=COMPONENTS)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def touch(kind: str, **payload: Any) -> Decision:
    return Decision([Touch(kind, payload)])


def test_turns_are_sorted_and_the_streak_follows_the_rules() -> None:
    assert classify(touch("unanswered", text="?"))[0] == FAILURE
    assert classify(touch("kb_answer", outcome="none", query="x"))[1] == {"kind": "kb_miss", "text": "x"}
    assert classify(touch("kb_answer", outcome="offered", query="x", confidence=0.3))[0] == FAILURE
    assert classify(touch("kb_answer", outcome="answered"))[0] == ANSWERED
    assert classify(touch("kb_feedback", helpful=False, article="a"))[0] == UNHELPFUL
    assert classify(touch("kb_feedback", helpful=True))[0] == SUCCESS
    assert classify(touch("flow_invalid_answer", flow="f", node="n", reason="not_a_number"))[0] == FAILURE
    assert classify(touch("flow_step", flow="f", node="n"))[0] == SUCCESS
    assert classify(touch("opted_in"))[0] == NEUTRAL
    both = Decision([Touch("flow_step", {}), Touch("flow_invalid_answer", {"node": "n"})])
    assert classify(both)[0] == FAILURE  # a failure outweighs progress in the same turn

    miss = {"kind": "kb_miss", "text": "x"}
    s = next_streak(None, FAILURE, miss, "t1")
    s = next_streak(s, FAILURE, miss, "t2")
    assert s is not None and s["count"] == 2
    answered = next_streak(s, ANSWERED, None, "t3")
    assert answered is not None and answered["count"] == 0 and answered["held"]["count"] == 2
    # "not helpful" on that answer continues the streak as if the answer had not happened
    unhelpful = next_streak(answered, UNHELPFUL, {"kind": "kb_unhelpful"}, "t4")
    assert unhelpful is not None and unhelpful["count"] == 3
    assert [x["at"] for x in unhelpful["signals"]] == ["t1", "t2", "t4"]
    assert next_streak(answered, SUCCESS, None, "t4") is None  # "helpful": the streak is over
    assert next_streak(s, NEUTRAL, None, "t5") == s  # a menu or a command changes nothing
    assert next_streak(None, ANSWERED, None, "t") is None
    long = None
    for i in range(9):
        long = next_streak(long, FAILURE, miss, f"t{i}")
    assert long is not None and long["count"] == 9 and len(long["signals"]) == 5  # the last five are kept

    assert threshold_from({}) == 3 and threshold_from({"LOKET_REPEATED_FAILURES": "5"}) == 5
    assert threshold_from({"LOKET_REPEATED_FAILURES": "0"}) == 0
    assert threshold_from({"LOKET_REPEATED_FAILURES": "lots"}) == 3


async def raised(d: Driver) -> list[dict[str, Any]]:
    return [t for t in await d.touchpoints("priority_raised") if t["payload"].get("reason") == "repeated_failures"]


async def test_three_kb_misses_raise_the_priority_and_the_handover_lists_them(server: LoketServer) -> None:
    d = Driver(server.rt)
    await d.send("halo")  # greeting: not a failure
    for text in NONSENSE[:2]:
        assert "belum menemukan jawaban" in texts(await d.send(text))
    conv = await d.conversation()
    assert conv["priority"] == "normal" and conv["meta"]["failures"]["count"] == 2
    await d.send(NONSENSE[2])
    conv = await d.conversation()
    assert conv["priority"] == "high"
    (tp,) = await raised(d)
    assert tp["payload"]["from"] == "normal" and tp["payload"]["to"] == "high" and tp["payload"]["failures"] == 3
    assert [f["text"] for f in tp["payload"]["failed"]] == NONSENSE
    # the customer asks for a person: the handover carries the streak, which then starts again
    assert "antrean" in texts(await d.send("0"))
    conv = await d.conversation()
    assert conv["state"] == "queued" and conv["handover"]["reason"] == "customer_asked"
    assert conv["handover"]["failures"] == 3
    assert [f["kind"] for f in conv["handover"]["failed"]] == ["kb_miss"] * 3
    assert conv["meta"]["failures"] is None
    # the agent sees why, in their language
    await make_agent(server, "sari@example.com", role="supervisor")
    sari = Agent(server)
    try:
        await sari.login("sari@example.com")
        status, html = await sari.get(f"/console/c/{conv['id']}")
        assert status == 200
        assert "Failures in a row" in html and html.count("KB found no answer") == 3
        assert "grunkle vapsidoo" in html
    finally:
        await sari.close()


async def test_not_helpful_continues_the_streak_and_helpful_ends_it(server: LoketServer) -> None:
    d = Driver(server.rt)
    await d.send("halo")
    await d.send(NONSENSE[0])
    await d.send(NONSENSE[1])
    assert "Senin–Jumat" in texts(await d.send("klinik buka jam berapa?"))
    assert (await d.conversation())["meta"]["failures"]["count"] == 0  # a confident answer, for now
    assert "Maaf jawabannya belum membantu" in texts(await d.send("tidak"))
    conv = await d.conversation()
    assert conv["priority"] == "high" and conv["meta"]["failures"]["count"] == 3
    assert [f["kind"] for f in (await raised(d))[0]["payload"]["failed"]] == ["kb_miss", "kb_miss", "kb_unhelpful"]

    other = Driver(server.rt)
    await other.send("halo")
    await other.send(NONSENSE[0])
    await other.send(NONSENSE[1])
    await other.send("klinik buka jam berapa?")
    assert "Terima kasih atas masukannya" in texts(await other.send("ya"))
    await other.send(NONSENSE[2])
    conv = await other.conversation()
    assert conv["priority"] == "normal" and conv["meta"]["failures"]["count"] == 1
    assert await raised(other) == []


async def test_a_flow_that_gives_up_hands_over_with_its_node_and_higher_priority(server: LoketServer) -> None:
    d = Driver(server.rt)
    await d.send("halo")
    assert "nomor pesanan" in texts(await d.send("pesanan"))
    assert "nomor pesanan" in texts(await d.send("belum tahu"))
    await d.send("lupa")
    assert "antrean" in texts(await d.send("pokoknya cepat"))  # the third invalid answer: the flow gives up
    conv = await d.conversation()
    assert conv["state"] == "queued" and conv["handover"]["reason"] == "flow_failed"
    assert conv["handover"]["flow_node"] == "nomor:ask" and conv["handover"]["failures"] == 3
    assert {f["reason"] for f in conv["handover"]["failed"]} == {"not_a_number"}
    assert conv["priority"] == "high"
    assert len(await raised(d)) == 1


async def test_the_rule_can_be_turned_off(settings_factory: Any) -> None:
    s = LoketServer(settings_factory(LOKET_KB=str(DEMO_PATH), LOKET_KB_SEMANTIC="off", LOKET_DEMO="false",
                                     LOKET_REPEATED_FAILURES="0"), components=COMPONENTS)
    await s.start()
    try:
        d = Driver(s.rt)
        await d.send("halo")
        for text in NONSENSE * 2:
            await d.send(text)
        assert (await d.conversation())["priority"] == "normal"
        assert not await s.fetch(select(touchpoints).where(touchpoints.c.kind == "priority_raised"))
    finally:
        await s.stop()
