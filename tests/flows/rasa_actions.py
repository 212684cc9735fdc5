"""Custom actions for the rasa-sdk action server the flow tests start (``python -m rasa_sdk --actions …``)."""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher


class ActionCheckMember(Action):
    """Looks the member number up: numbers starting with 9 are gold members."""

    def name(self) -> str:
        return "action_check_member"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[dict[str, Any]]:
        member = str(tracker.get_slot("member_no") or "")
        tier = "gold" if member.startswith("9") else "basic"
        dispatcher.utter_message(text=f"Member {member} checked by Rasa.",
                                 buttons=[{"title": "OK", "payload": "ok"}])
        return [SlotSet("tier", tier), SlotSet("checked_by", tracker.latest_message.get("text"))]


class ActionBroken(Action):
    def name(self) -> str:
        return "action_broken"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[dict[str, Any]]:
        raise RuntimeError("the CRM is down")
