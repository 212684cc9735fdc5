"""Handlers: typed Python functions a flow's ``call`` node runs.

A handler gets a :class:`HandlerContext` (customer, conversation, slots, channel, arguments, the open database
connection of the routing transaction) and returns a ``dict`` that the flow stores in a slot (``save:``) for
branching and templated replies. Handlers may ask for effects (set a customer attribute, label the
conversation, a feature's Custom effect) by appending to ``ctx.effects``; they are committed with the reply.

Register one with the decorator::

    from bot.handlers.registry import HandlerContext, register

    @register("order_status")
    async def order_status(ctx: HandlerContext) -> dict[str, Any]:
        ...

Raise :class:`HandlerError` with a customer-safe reason when the handler cannot do its job; the flow then
follows the node's ``on_error`` (or apologises and hands over) and records a ``flow_error`` touchpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.effects import Effect


class HandlerError(Exception):
    """The handler could not do its job; ``reason`` goes on the customer's timeline."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class HandlerContext:
    args: dict[str, Any]
    slots: dict[str, Any]
    customer_id: int
    customer_language: str
    customer_timezone: str
    customer_attributes: dict[str, Any]
    conversation_id: int
    channel: str
    language: str
    flow_id: str
    node_id: str
    now: datetime
    services: dict[str, Any]
    conn: Any = None  # the routing transaction's AsyncConnection (None outside the router)
    effects: list[Effect] = field(default_factory=list)


Handler = Callable[[HandlerContext], Awaitable[dict[str, Any]]]
HANDLERS: dict[str, Handler] = {}


def register(name: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the handler ``name`` (a flow's ``call: {handler: name}``)."""

    def deco(fn: Handler) -> Handler:
        if name in HANDLERS and HANDLERS[name] is not fn:
            raise ValueError(f"handler {name!r} is already registered by {HANDLERS[name].__module__}; pick another name")
        HANDLERS[name] = fn
        return fn

    return deco


def get(name: str) -> Handler | None:
    return HANDLERS.get(name)


def names() -> set[str]:
    return set(HANDLERS)
