"""The channel-neutral message shapes: what adapters produce (InboundMessage) and what the router writes (Reply)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CHANNELS = ("webchat", "telegram", "whatsapp", "email")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    sha256: str | None = None  # content-addressed file under the data directory
    url: str | None = None  # provider URL when not downloaded yet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InboundMessage:
    """One customer message, normalized. ``(channel, provider_message_id)`` is unique."""

    channel: str
    address: str  # E.164 phone, chat id, email address, visitor id
    provider_message_id: str
    text: str = ""
    button_payload: str | None = None
    display_name: str | None = None
    language_hint: str | None = None
    attachments: tuple[Attachment, ...] = ()
    kind: str = "message"  # message | contact | edited | unsupported | start | bounce | status
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Per-conversation ordering key (one identity)."""
        return f"{self.channel}:{self.address}"

    def to_payload(self) -> dict[str, Any]:
        # written out (not dataclasses.asdict, which deep-copies every value): this runs for every message
        return {
            "channel": self.channel, "address": self.address, "provider_message_id": self.provider_message_id,
            "text": self.text, "button_payload": self.button_payload, "display_name": self.display_name,
            "language_hint": self.language_hint, "attachments": [a.to_dict() for a in self.attachments],
            "kind": self.kind, "meta": self.meta,
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> InboundMessage:
        data = dict(data)
        data["attachments"] = tuple(Attachment(**a) for a in data.get("attachments") or ())
        return cls(**data)


@dataclass(frozen=True)
class Choice:
    label: str
    value: str

    def to_dict(self) -> dict[str, str]:
        return {"label": self.label, "value": self.value}


@dataclass(frozen=True)
class Reply:
    """What the bot (or an agent) says, before a channel renders it.

    ``purpose`` names why it is sent (``reply``, ``appointment_reminder``, ``csat``, ``reopen`` …): channels
    with a template rule (WhatsApp outside the 24-hour window) pick an approved template by it.
    """

    text: str
    choices: tuple[Choice, ...] = ()
    purpose: str = "reply"
    author: str = "bot"  # bot | agent | system
    agent_id: int | None = None
    attachments: tuple[Attachment, ...] = ()
    template_variables: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "choices": [c.to_dict() for c in self.choices],
            "purpose": self.purpose,
            "author": self.author,
            "agent_id": self.agent_id,
            "attachments": [a.to_dict() for a in self.attachments],
            "template_variables": dict(self.template_variables),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Reply:
        return cls(
            text=data.get("text", ""),
            choices=tuple(Choice(**c) for c in data.get("choices") or ()),
            purpose=data.get("purpose", "reply"),
            author=data.get("author", "bot"),
            agent_id=data.get("agent_id"),
            attachments=tuple(Attachment(**a) for a in data.get("attachments") or ()),
            template_variables=dict(data.get("template_variables") or {}),
            meta=dict(data.get("meta") or {}),
        )


@dataclass(frozen=True)
class OutboundMessage:
    """A reply bound for one identity, as the dispatcher hands it to a channel."""

    message_id: int
    conversation_id: int
    customer_id: int
    channel: str
    address: str
    reply: Reply
    identity_meta: dict[str, Any] = field(default_factory=dict)
    last_inbound_at: Any = None  # datetime | None, for the WhatsApp 24-hour window
    thread: dict[str, Any] = field(default_factory=dict)  # email threading headers, etc.


@dataclass(frozen=True)
class ProviderReceipt:
    provider_message_id: str | None
    status: str = "sent"  # sent | delivered | queued
    detail: dict[str, Any] = field(default_factory=dict)
