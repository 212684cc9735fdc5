"""The most common Telegram update, a customer's text message in a private chat, parsed on a short path.

aiogram's ``Update`` validates the whole Bot API schema (a ``Message`` alone has ~90 optional fields, each
nested object built as a model with bot context); for the update a service desk receives most often that
was ~65 µs of the ~600 µs a reply may cost at full load. ``TextUpdate`` is a pydantic model of exactly the
fields Loket reads from such an update. It is used only when the update contains nothing else
(``accepts``): any other key, any other content, a group chat, a field of the wrong type, and the update
goes through aiogram's model as before, which also writes the error message for a malformed one. Both
shapes expose the same attributes, so one normalizer serves both (``TelegramChannel.normalize``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_UPDATE_KEYS = frozenset({"update_id", "message"})
_MESSAGE_KEYS = frozenset({"message_id", "date", "chat", "from", "text", "entities", "link_preview_options"})
_CHAT_KEYS = frozenset({"id", "type", "first_name", "last_name", "username"})
_USER_KEYS = frozenset({"id", "is_bot", "first_name", "last_name", "username", "language_code", "is_premium"})


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, populate_by_name=True)


class TextChat(_Strict):
    id: int
    type: str
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None


class TextUser(_Strict):
    id: int
    is_bot: bool
    first_name: str
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = None
    is_premium: bool | None = None


class TextMessage(_Strict):
    message_id: int
    date: int
    chat: TextChat
    from_user: TextUser | None = Field(default=None, alias="from")
    text: str
    entities: list[dict[str, Any]] | None = None
    link_preview_options: dict[str, Any] | None = None
    # what the normalizer asks of any message: a text message has none of these
    caption: None = None
    contact: None = None
    edit_date: None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return None  # photo, document, sticker, location …: absent from a text message


class TextUpdate(_Strict):
    update_id: int
    message: TextMessage
    edited_message: None = None
    callback_query: None = None
    my_chat_member: None = None


def accepts(data: dict[str, Any]) -> bool:
    """Only a private-chat text message with nothing else in it takes the short path."""
    if data.keys() - _UPDATE_KEYS:
        return False
    msg = data.get("message")
    if not isinstance(msg, dict) or msg.keys() - _MESSAGE_KEYS or "text" not in msg:
        return False
    chat, user = msg.get("chat"), msg.get("from")
    if not isinstance(chat, dict) or chat.keys() - _CHAT_KEYS or chat.get("type") != "private":
        return False
    return user is None or (isinstance(user, dict) and not user.keys() - _USER_KEYS)


def parse_text_update(data: dict[str, Any]) -> TextUpdate | None:
    """The update as a ``TextUpdate``, or None when it must go through aiogram's full model."""
    if not accepts(data):
        return None
    try:
        return TextUpdate.model_validate(data)
    except ValidationError:
        return None  # aiogram's model reports what is wrong with it
