"""Effects: what a routing decision asks the pipeline to do. The pipeline commits them in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.messages import Reply


@dataclass(frozen=True)
class Send:
    """Send a reply to the conversation's customer on the conversation's channel."""

    reply: Reply


@dataclass(frozen=True)
class SetState:
    """Move the conversation: ``bot`` / ``queued`` / ``assigned`` / ``pending_customer`` / ``resolved``."""

    state: str
    reason: str | None = None
    team: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetFlow:
    """Store the flow position (flow id, version, node, slots, …) or clear it with ``None``."""

    position: dict[str, Any] | None


@dataclass(frozen=True)
class Touch:
    """Append a touchpoint to the customer's timeline."""

    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    actor: str = "bot"


@dataclass(frozen=True)
class UpdateCustomer:
    """Change the customer record: language, display name, attributes, tags, opt-out."""

    language: str | None = None
    display_name: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    add_tags: tuple[str, ...] = ()
    opted_out: bool | None = None


@dataclass(frozen=True)
class UpdateConversation:
    """Change conversation fields other than state: priority, labels, language."""

    priority: str | None = None
    add_labels: tuple[str, ...] = ()
    language: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Emit:
    """A domain event (``message.created``, ``conversation.status_changed`` …) published after commit."""

    name: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Custom:
    """An effect owned by a feature (appointments, knowledge base feedback …), applied by its registered applier."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


Effect = Send | SetState | SetFlow | Touch | UpdateCustomer | UpdateConversation | Emit | Custom


@dataclass
class Decision:
    """The router's answer for one message: the effects, and which step decided."""

    effects: list[Effect] = field(default_factory=list)
    step: str = ""

    def add(self, *effects: Effect) -> Decision:
        self.effects.extend(effects)
        return self
