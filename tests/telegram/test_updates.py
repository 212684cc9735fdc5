"""The short path for text updates gives exactly what aiogram's full model gives, and only for text updates."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiogram.types import Update

from bot.channels.telegram import BadUpdate
from bot.channels.telegram_updates import TextUpdate
from tests.support import LoketServer


def text_update(**message: Any) -> dict[str, Any]:
    msg = {"message_id": 7, "date": 1_700_000_000, "text": "halo, saya mau tanya",
           "chat": {"id": 4242, "type": "private", "first_name": "Sari", "last_name": "W"},
           "from": {"id": 4242, "is_bot": False, "first_name": "Sari", "last_name": "W", "username": "sariw",
                    "language_code": "id-ID"}}
    msg.update(message)
    return {"update_id": 99, "message": msg}


@pytest.mark.parametrize("message", [
    {},
    {"text": "/start flow_clinic"},
    {"text": "/start"},
    {"from": {"id": 4242, "is_bot": False, "first_name": "Sari"}},
    {"entities": [{"type": "bot_command", "offset": 0, "length": 6}], "text": "/start"},
])
async def test_short_path_normalizes_like_aiogram(loket_tg: LoketServer, message: dict[str, Any]) -> None:
    channel = loket_tg.rt.services["telegram"]
    data = text_update(**message)
    short = channel.parse_update(json.dumps(data).encode())
    assert isinstance(short, TextUpdate)
    full = Update.model_validate(data, context={"bot": channel.bot})
    a, b = await channel.normalize(short), await channel.normalize(full)
    assert a.message is not None and a == b


@pytest.mark.parametrize("change", [
    {"photo": [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]},  # other content
    {"chat": {"id": 1, "type": "group", "title": "g"}},  # not a private chat
    {"reply_to_message": {"message_id": 1, "date": 1, "chat": {"id": 1, "type": "private"}}},  # unknown key
    {"text": 5},  # wrong type: aiogram's model says what is wrong
])
async def test_anything_else_goes_through_aiogram(loket_tg: LoketServer, change: dict[str, Any]) -> None:
    channel = loket_tg.rt.services["telegram"]
    body = json.dumps(text_update(**change)).encode()
    if change.get("text") == 5:
        with pytest.raises(BadUpdate, match="not a valid Telegram Update: message.text"):
            channel.parse_update(body)
        return
    assert isinstance(channel.parse_update(body), Update)
