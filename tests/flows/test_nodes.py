"""Node types beyond the demo's paths: search_kb, handlers that change the customer, branch subjects,
choice questions, number ranges with on_fail, goto another flow, templated numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.effects import Decision, Send
from bot.messages import Reply
from bot.router import RouteContext
from storage.models import customers
from tests.flows.helpers import Driver, started_runtime, texts, write_flow

KB_FLOW = """
id: faq
version: 1
start: ask_q
triggers: [tanya]
nodes:
  ask_q:
    type: ask
    save: question
    text: {id: "Apa pertanyaan Anda?", en: "What is your question?"}
    next: kb
  kb:
    type: search_kb
    query: "{question}"
    %(on_miss)s
    next: more
  more:
    type: end
    text: {id: "Semoga membantu!", en: "Hope that helps!"}
  %(miss_node)s
"""


async def _kb_answer(ctx: RouteContext, query: str) -> Decision | None:
    if "parkir" in query:
        return Decision().add(Send(Reply(f"KB: parkir gratis ({query})")))
    return None


async def test_search_kb_answers_or_hands_over(settings_factory: Any, tmp_path: Path) -> None:
    folder = tmp_path / "flows"
    write_flow(folder, "faq.yaml", KB_FLOW % {"on_miss": "", "miss_node": ""})
    rt = await started_runtime(settings_factory(LOKET_FLOWS=str(folder)))
    try:
        # no knowledge base installed: apologise and hand over
        d = Driver(rt)
        await d.send("mau tanya")
        reply = texts(await d.send("ada parkir?"))
        assert "belum menemukan jawabannya" in reply and "antrean" in reply
        assert (await d.conversation())["handover"]["reason"] == "kb_no_answer"
        # with the knowledge base: its answer, then the flow goes on
        rt.services["kb_answer"] = _kb_answer
        d = Driver(rt)
        await d.send("mau tanya")
        replies = await d.send("ada parkir?")
        assert [r["body"] for r in replies] == ["KB: parkir gratis (ada parkir?)", "Semoga membantu!"]
        # no answer: hand over
        d = Driver(rt)
        await d.send("mau tanya")
        assert "belum menemukan jawabannya" in texts(await d.send("jam berapa dokter datang?"))
    finally:
        await rt.stop()


async def test_search_kb_on_miss(settings_factory: Any, tmp_path: Path) -> None:
    folder = tmp_path / "flows"
    write_flow(folder, "faq.yaml", KB_FLOW % {
        "on_miss": "on_miss: miss",
        "miss_node": 'miss: {type: end, text: {id: "Tidak ketemu: {question}", en: "Not found: {question}"}}'})
    rt = await started_runtime(settings_factory(LOKET_FLOWS=str(folder)))
    rt.services["kb_answer"] = _kb_answer
    try:
        d = Driver(rt)
        await d.send("mau tanya")
        assert texts(await d.send("warna seragam?")) == "Tidak ketemu: warna seragam?"
        assert (await d.conversation())["state"] == "bot"
    finally:
        await rt.stop()


PROFILE_FLOW = """
id: profile
version: 1
start: branch_pick
triggers: [profil]
nodes:
  branch_pick:
    type: ask
    save: branch
    text: {id: "Cabang mana?", en: "Which branch?"}
    validate: {type: choice}
    options:
      - {label: {id: Jakarta Selatan, en: South Jakarta}, value: jaksel, aliases: [jaksel]}
      - {label: {id: Bandung, en: Bandung}, value: bandung}
    next: people
  people:
    type: ask
    save: people
    text: {id: "Berapa orang? (1-5)", en: "How many people? (1-5)"}
    validate: {type: number, min: 1, max: 5}
    error: {id: "Jumlah orang 1 sampai 5.", en: "Between 1 and 5 people."}
    max_attempts: 2
    on_fail: too_many
    next: save_attr
  save_attr:
    type: call
    handler: set_attribute
    args: {preferred_branch: "{branch}", party_size: "{people}"}
    next: tag
  tag:
    type: call
    handler: tag_conversation
    args: {tags: [reservasi], customer: true}
    next: check
  check:
    type: branch
    cases:
      - {if: {channel: telegram}, goto: telegram_only}
      - {if: {slot: people, gte: 4}, goto: big}
      - {if: {language: en}, goto: english}
    else: done
  telegram_only: {type: end, text: {id: "Telegram", en: "Telegram"}}
  big: {type: goto, flow: deposit}
  english: {type: end, text: {id: "-", en: "English speaker, {people} people"}}
  done: {type: end, text: {id: "Tercatat {people} orang di {branch_display}", en: "-"}}
  too_many:
    type: handover
    team: reservations
    reason: large_group
    include: [branch]
"""
DEPOSIT_FLOW = """
id: deposit
version: 1
start: info
nodes:
  info:
    type: branch
    cases:
      - {if: {attribute: preferred_branch, equals: jaksel}, goto: jaksel}
    else: other
  jaksel: {type: end, text: {id: "Deposit {deposit} untuk {people} orang di {preferred_branch}", en: "-"}}
  other: {type: end, text: {id: "Deposit di kasir", en: "-"}}
"""


async def test_handlers_change_the_customer_and_branches_read_them(settings_factory: Any, tmp_path: Path) -> None:
    folder = tmp_path / "flows"
    write_flow(folder, "profile.yaml", PROFILE_FLOW)
    write_flow(folder, "deposit.yaml", DEPOSIT_FLOW)
    rt = await started_runtime(settings_factory(LOKET_FLOWS=str(folder), LOKET_DEFAULT_FLOW="profile"))
    try:
        d = Driver(rt)
        assert "Cabang mana?" in texts(await d.send("profil"))
        assert "Berapa orang" in texts(await d.send("bandnug"))  # a choice question takes typos too
        reply = texts(await d.send("9"))
        assert "Jumlah orang 1 sampai 5." in reply and "Berapa orang" in reply
        assert texts(await d.send("2")) == "Tercatat 2 orang di Bandung"
        conv = await d.conversation()
        assert conv["labels"] == ["reservasi"]
        async with rt.engine.connect() as conn:
            cust = (await conn.execute(select(customers))).mappings().one()
        assert cust["attributes"] == {"preferred_branch": "bandung", "party_size": 2}
        assert cust["tags"] == ["reservasi"]

        # the attribute set_attribute stored drives a branch in another flow in the same turn;
        # an unknown placeholder ({deposit}) is left empty rather than shown as code
        e = Driver(rt)
        await e.send("profil")
        await e.send("1")
        assert texts(await e.send("4")) == "Deposit  untuk 4 orang di jaksel"

        # two wrong answers with max_attempts 2: on_fail hands over with the slots
        f = Driver(rt, language="en")
        await f.send("profil")
        await f.send("South Jakarta")
        await f.send("10")
        reply = texts(await f.send("12"))
        assert "you are in the queue" in reply
        handover = (await f.conversation())["handover"]
        assert handover["reason"] == "large_group" and handover["slots"] == {"branch": "jaksel"}

        # language and channel subjects
        g = Driver(rt, language="en")
        await g.send("profil")
        await g.send("2")
        assert texts(await g.send("3")) == "English speaker, 3 people"
        h = Driver(rt, channel="telegram", address="123456789")
        await h.send("profil")
        await h.send("2")
        assert texts(await h.send("1")) == "Telegram"
    finally:
        await rt.stop()
