"""Drive the real pipeline and router for flow tests (no HTTP; the same code the router worker runs)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.clock import Clock
from bot.config import Settings
from bot.messages import InboundMessage
from bot.runtime import Runtime
from storage.models import conversations, identities, messages, touchpoints

FLOW_COMPONENTS = ["bot.channels.webchat", "bot.health", "bot.flows.component"]


class Driver:
    """One customer talking to a started Runtime through ``pipeline.handle_inbound``."""

    def __init__(self, rt: Runtime, channel: str = "webchat", address: str | None = None,
                 language: str | None = None) -> None:
        self.rt = rt
        self.channel = channel
        self.address = address or f"visitor-{uuid.uuid4().hex[:10]}"
        self.language = language
        self.last_id = 0
        self.last_choices: list[dict[str, str]] = []

    async def send(self, text: str = "", payload: str | None = None, kind: str = "message",
                   meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        msg = InboundMessage(channel=self.channel, address=self.address, provider_message_id=uuid.uuid4().hex,
                             text=text, button_payload=payload, language_hint=self.language, kind=kind,
                             meta=meta or {})
        async with self.rt.engine.begin() as conn:
            await self.rt.pipeline.handle_inbound(conn, msg, [])
        return await self.replies()

    async def press(self, label_start: str) -> list[dict[str, Any]]:
        choice = next(c for c in self.last_choices if c["label"].lower().startswith(label_start.lower()))
        return await self.send(choice["label"], payload=choice["value"])

    async def replies(self) -> list[dict[str, Any]]:
        async with self.rt.engine.connect() as conn:
            rows = (await conn.execute(
                select(messages.c.id, messages.c.body, messages.c.choices, messages.c.conversation_id)
                .where(messages.c.direction == "out", messages.c.id > self.last_id,
                       messages.c.conversation_id.in_(select(conversations.c.id).where(
                           conversations.c.identity_id.in_(select(identities.c.id).where(
                               identities.c.channel == self.channel, identities.c.address == self.address)))))
                .order_by(messages.c.id))).mappings().all()
        if rows:
            self.last_id = rows[-1]["id"]
            self.last_choices = list(rows[-1]["choices"] or [])
        return [dict(r) for r in rows]

    async def conversation(self) -> dict[str, Any]:
        async with self.rt.engine.connect() as conn:
            ident = (await conn.execute(select(identities).where(
                identities.c.channel == self.channel, identities.c.address == self.address))).mappings().one()
            return dict((await conn.execute(select(conversations).where(conversations.c.identity_id == ident["id"])
                                            .order_by(conversations.c.id.desc()).limit(1))).mappings().one())

    async def touchpoints(self, kind: str) -> list[dict[str, Any]]:
        conv = await self.conversation()
        async with self.rt.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(select(touchpoints).where(
                touchpoints.c.conversation_id == conv["id"], touchpoints.c.kind == kind))).mappings()]


def texts(replies: list[dict[str, Any]]) -> str:
    return "\n---\n".join(r["body"] for r in replies)


async def started_runtime(settings: Settings, clock: Clock | None = None, role: str = "web") -> Runtime:
    rt = Runtime(settings, role=role, clock=clock, components=FLOW_COMPONENTS)
    await rt.prepare(migrate=False)
    await rt.start()
    return rt


def write_flow(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path
