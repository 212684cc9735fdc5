"""Run a Rasa custom action on a rasa-sdk action server (``POST …/webhook``) and read back its answer.

The request is what Rasa itself sends (``next_action``, ``sender_id``, ``tracker``, ``domain``, ``version``);
the answer's ``events`` (``slot``, ``reset_slots``) change the flow's slots and its ``responses`` (text,
buttons) become replies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from bot.messages import Choice, Reply

RASA_VERSION = "3.6.0"


class RasaActionError(Exception):
    """The action server failed, refused the action, or did not answer in time."""


@dataclass
class RasaResult:
    slots: dict[str, Any] = field(default_factory=dict)
    reset: bool = False
    replies: list[Reply] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def _jsonable_slots(slots: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in slots.items() if isinstance(v, str | int | float | bool | list | dict) or v is None}


def build_request(action: str, sender_id: str, slots: dict[str, Any], text: str, now: datetime,
                  intent: str | None = None) -> dict[str, Any]:
    flat = _jsonable_slots(slots)
    ts = now.timestamp()
    latest = {"text": text, "intent": {"name": intent, "confidence": 1.0 if intent else 0.0},
              "entities": [], "intent_ranking": []}
    return {
        "next_action": action,
        "sender_id": sender_id,
        "tracker": {
            "sender_id": sender_id,
            "slots": flat,
            "latest_message": latest,
            "latest_event_time": ts,
            "followup_action": None,
            "paused": False,
            "events": [{"event": "user", "timestamp": ts, "text": text, "parse_data": latest}],
            "latest_input_channel": "loket",
            "active_loop": {},
            "latest_action": {"action_name": "action_listen"},
            "latest_action_name": "action_listen",
        },
        "domain": {
            "version": "3.1",
            "config": {"store_entities_as_slots": True},
            "session_config": {"session_expiration_time": 60, "carry_over_slots_to_new_session": True},
            "intents": [intent] if intent else [],
            "entities": [],
            "slots": {name: {"type": "any", "influence_conversation": False, "mappings": []} for name in flat},
            "responses": {},
            "actions": [action],
            "forms": {},
            "e2e_actions": [],
        },
        "version": RASA_VERSION,
    }


def parse_response(data: dict[str, Any]) -> RasaResult:
    result = RasaResult(events=list(data.get("events") or []))
    for ev in result.events:
        kind = ev.get("event")
        if kind == "slot" and isinstance(ev.get("name"), str):
            result.slots[ev["name"]] = ev.get("value")
        elif kind in {"reset_slots", "restart"}:
            result.reset = True
            result.slots.clear()
    for resp in data.get("responses") or []:
        text = str(resp.get("text") or "").strip()
        buttons = resp.get("buttons") or []
        choices = tuple(Choice(str(b.get("title") or b.get("payload")), str(b.get("payload") or b.get("title")))
                        for b in buttons if isinstance(b, dict))
        if text or choices:
            result.replies.append(Reply(text or "…", choices=choices))
    return result


async def run_action(url: str, action: str, sender_id: str, slots: dict[str, Any], text: str, now: datetime,
                     timeout: float = 5.0, session: aiohttp.ClientSession | None = None) -> RasaResult:
    body = build_request(action, sender_id, slots, text, now)
    own = session is None
    sess = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    try:
        async with sess.post(url, json=body) as resp:
            try:
                data = await resp.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                data = None
            if resp.status != 200:
                detail = data.get("error") if isinstance(data, dict) else None
                raise RasaActionError(f"action server answered HTTP {resp.status}" + (f": {detail}" if detail else ""))
            if not isinstance(data, dict):
                raise RasaActionError("action server answered something other than a JSON object")
            return parse_response(data)
    except TimeoutError as exc:
        raise RasaActionError(f"action server did not answer within {timeout:g}s") from exc
    except aiohttp.ClientError as exc:
        raise RasaActionError(f"action server unreachable: {exc.__class__.__name__}: {exc}") from exc
    finally:
        if own:
            await sess.close()
