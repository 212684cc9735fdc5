"""The channel interface (DESIGN §4) and the errors a send can end in."""

from __future__ import annotations

from typing import Any, Protocol

from bot.messages import OutboundMessage, ProviderReceipt


class SendError(Exception):
    """Base of send failures. ``reason`` is readable by an agent."""

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TransientSendError(SendError):
    """Try again later (5xx, timeout, 429). ``retry_after`` seconds when the provider said so."""

    def __init__(self, reason: str, *, retry_after: float | None = None, code: str | None = None,
                 ambiguous: bool = False) -> None:
        super().__init__(reason, code=code)
        self.retry_after = retry_after
        self.ambiguous = ambiguous  # the provider may have accepted it (timeout after sending)


class PermanentSendError(SendError):
    """Will never succeed as is. ``unreachable`` marks the identity (blocked bot, bounced address)."""

    def __init__(self, reason: str, *, unreachable: bool = False, code: str | None = None) -> None:
        super().__init__(reason, code=code)
        self.unreachable = unreachable


class Channel(Protocol):
    """What every channel adapter implements. Optional: ``precheck(reply, identity_row, now) -> str | None``
    returns a readable reason when a reply cannot go out now (WhatsApp's closed 24-hour window with no
    template for the reply's purpose); ``bot.outbound.act_on_conversation`` calls it before queueing."""

    name: str

    async def send(self, out: OutboundMessage) -> ProviderReceipt: ...

    def render(self, out: OutboundMessage) -> Any: ...


class ChannelRegistry:
    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def add(self, channel: Channel) -> None:
        self._channels[channel.name] = channel

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def names(self) -> list[str]:
        return sorted(self._channels)


def numbered_choices(text: str, choices: list[dict[str, str]] | tuple[Any, ...]) -> str:
    """The text fallback for choices: one message, numbered lines the router accepts as answers."""
    if not choices:
        return text
    lines = [text, ""]
    for i, c in enumerate(choices, 1):
        label = c["label"] if isinstance(c, dict) else c.label
        lines.append(f"{i}. {label}")
    return "\n".join(lines)
