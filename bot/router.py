"""The conversation router: a chain of small, named steps, each deciding from (conversation state, message).

Order (DESIGN §3.4): a conversation with a human (``queued``/``assigned``) goes to the agent console; a
conversation with the bot tries global commands, then feature steps (appointment replies, the active flow,
the knowledge base), then the default. The first step that returns a Decision wins.

Steps get a ``RouteContext`` and return effects; they perform no I/O of their own. A feature step that
needs data (the knowledge-base index, the flow registry, a handler) gets it from ``ctx.services``; the
pipeline commits the effects atomically.

After the deciding step, *observers* (``Router.observe``) see the decision and may return an amended one
(more effects, richer handover details). They are pure as well: the repeated-failure counter of the agent
console keeps its streak in the conversation's meta this way, without a query of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.effects import Decision
from bot.messages import InboundMessage


@dataclass(frozen=True)
class CustomerView:
    id: int
    display_name: str | None
    language: str
    timezone: str
    tags: list[Any]
    attributes: dict[str, Any]
    opted_out: bool
    is_new: bool = False


@dataclass(frozen=True)
class ConversationView:
    id: int
    state: str
    channel: str
    flow: dict[str, Any] | None
    language: str | None
    team_id: int | None
    assignee_id: int | None
    priority: str
    labels: list[Any]
    meta: dict[str, Any]
    is_new: bool = False
    reopened: bool = False

    @property
    def recent_failures(self) -> int:
        """Turns in a row in which the bot failed the customer (``meta["failures"]["count"]``, kept by the
        repeated-failure observer of ``agent_console.failures``); 0 when nothing counts them."""
        streak = self.meta.get("failures")
        return int(streak.get("count") or 0) if isinstance(streak, dict) else 0


@dataclass
class RouteContext:
    message: InboundMessage
    customer: CustomerView
    conversation: ConversationView
    now: datetime
    services: dict[str, Any] = field(default_factory=dict)
    identity_meta: dict[str, Any] = field(default_factory=dict)
    last_choices: list[dict[str, str]] = field(default_factory=list)  # choices of the last bot message

    @property
    def language(self) -> str:
        return self.conversation.language or self.customer.language or "id"

    @property
    def raw_text(self) -> str:
        return (self.message.text or "").strip()

    @property
    def text(self) -> str:
        """The customer's answer: a button payload, a choice picked by number or label, or the typed text."""
        if self.message.button_payload:
            return self.message.button_payload.strip()
        picked = resolve_choice(self.raw_text, self.last_choices)
        return picked if picked is not None else self.raw_text


def resolve_choice(text: str, choices: list[dict[str, str]]) -> str | None:
    """Map "2", "2.", or a choice's label (any case) to that choice's value."""
    if not choices:
        return None
    t = text.strip().rstrip(".").strip().lower()
    if t.isdigit():
        n = int(t)
        return choices[n - 1]["value"] if 1 <= n <= len(choices) else None
    for c in choices:
        if t in {c["label"].strip().lower(), c["value"].strip().lower()}:
            return c["value"]
    return None


Step = Callable[[RouteContext], Awaitable[Decision | None]]
Observer = Callable[[RouteContext, Decision], Decision]


@dataclass(order=True)
class _Registered:
    order: int
    name: str
    step: Step = field(compare=False)


# Documented slots. Features register between them.
ORDER_HUMAN = 10
ORDER_COMMANDS = 20
ORDER_APPOINTMENTS = 30
ORDER_FLOW = 40
ORDER_KB = 50
ORDER_DEFAULT = 90


class Router:
    def __init__(self) -> None:
        self._steps: list[_Registered] = []
        self._observers: list[tuple[str, Observer]] = []

    def add(self, name: str, step: Step, order: int) -> None:
        if any(r.name == name for r in self._steps):
            raise ValueError(f"router step {name!r} is already registered; each step registers once")
        self._steps.append(_Registered(order, name, step))
        self._steps.sort()

    @property
    def step_names(self) -> list[str]:
        return [r.name for r in self._steps]

    def observe(self, name: str, observer: Observer) -> None:
        """Let ``observer`` amend every decision after the deciding step (in registration order)."""
        if any(n == name for n, _ in self._observers):
            raise ValueError(f"router observer {name!r} is already registered; each observer registers once")
        self._observers.append((name, observer))

    async def route(self, ctx: RouteContext) -> Decision:
        decision = Decision(step="none")
        for reg in self._steps:
            found = await reg.step(ctx)
            if found is not None:
                found.step = found.step or reg.name
                decision = found
                break
        for _, observer in self._observers:
            decision = observer(ctx, decision)
        return decision
