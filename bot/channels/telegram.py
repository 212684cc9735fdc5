"""Telegram through the Bot API, with aiogram 3 (DESIGN §4).

Inbound: ``POST /webhooks/telegram`` (checked against ``X-Telegram-Bot-Api-Secret-Token``) or, for
development without a public URL, a ``getUpdates`` long-polling loop (``loket telegram poll``). Both feed
one normalizer (``TelegramChannel.normalize``) and persist through ``rt.inbox.submit`` before acknowledging.

Dedup keys (``provider_message_id``): a message is ``m:<chat_id>:<message_id>`` (so a retried update, or the
same message seen by webhook and polling, is one message); an edit is ``e:<chat_id>:<message_id>:<update_id>``
(each edit is its own event); a button press is ``cb:<callback_query_id>``.

Outbound: text with choices as an inline keyboard (``callback_data`` = the choice value, or ``#<n>`` when the
value is over Telegram's 64 bytes), attachments as ``sendPhoto``/``sendDocument``. A limiter keeps ~30
messages/s per bot and one message/s per chat (shared through Redis when ``REDIS_URL`` is set). aiogram's
errors map onto ``TransientSendError``/``PermanentSendError`` for the dispatcher.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import mimetypes
import re
import time
from dataclasses import dataclass, field
from typing import Any, cast

import bot.channels.aiogram_lazy  # noqa: F401 - first: aiogram types are built on first use

# isort: split
import orjson
import phonenumbers
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import SendMessage
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    ChatMemberUpdated,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
)
from aiogram.utils.token import TokenValidationError
from aiohttp import ClientError, ClientTimeout, web
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.attachments import AttachmentRejected, AttachmentStore
from bot.channels.base import PermanentSendError, SendError, TransientSendError
from bot.channels.telegram_updates import TextMessage, TextUpdate, parse_text_update
from bot.config import ConfigError, Settings, non_negative
from bot.effects import Decision, Send, Touch
from bot.events import redis_client
from bot.messages import InboundMessage, OutboundMessage, ProviderReceipt, Reply
from bot.router import ORDER_FLOW, RouteContext
from bot.runtime import Runtime
from bot.texts import register, t
from storage.models import customers, identities
from storage.repositories import add_touchpoint, inbox_has, merge_customers

log = logging.getLogger("loket.telegram")

CHANNEL = "telegram"
WEBHOOK_PATH = "/webhooks/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "edited_message", "callback_query", "my_chat_member"]
MAX_UPDATE_BYTES = 1024 * 1024
GETFILE_LIMIT = 20 * 1024 * 1024  # the cloud Bot API serves files up to 20 MB
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
CALLBACK_DATA_LIMIT = 64
FILE_KINDS = ("document", "photo", "voice", "audio", "video", "video_note", "animation")
UNSUPPORTED_KINDS = ("sticker", "location", "venue", "poll", "dice", "game", "story", "invoice", "paid_media")
DEFAULT_REGION = "ID"
_JSON_HEADERS = {"Content-Type": "application/json"}
# the webhook's usual answers, serialised once
_OUTCOME_BODIES = {o: json.dumps({"ok": True, "outcome": o}).encode() for o in ("stored", "duplicate", "ignored")}

register({
    "telegram.contact_saved": {
        "id": "Terima kasih, nomor {phone} sudah kami simpan.",
        "en": "Thank you, we have saved your number {phone}.",
    },
})


class BadUpdate(Exception):
    """The webhook body is not a Telegram Update; the message goes back in the 400 response."""


class UnservedUpdate(Exception):
    """A well-formed update of a type this bot does not handle: answered 200, nothing stored."""


# ---------------------------------------------------------------------------------------------- helpers
def normalize_phone(raw: str, region: str = DEFAULT_REGION) -> str | None:
    """A phone number as Telegram shares it ("6281234567890", "+62 812-…", "0812…") → E.164, or None."""
    digits = raw.strip()
    if not digits:
        return None
    candidates = [digits] if digits.startswith("+") else ["+" + digits, digits]
    for cand in candidates:
        try:
            num = phonenumbers.parse(cand, None if cand.startswith("+") else region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(num):
            return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    return None


def callback_data_for(value: str, index: int) -> str:
    """A choice's button payload: its value when it fits Telegram's 64 bytes, else ``#<position>``."""
    if value and len(value.encode("utf-8")) <= CALLBACK_DATA_LIMIT and not value.startswith("#"):
        return value
    return f"#{index}"


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Split a long text on line (or word) boundaries into parts Telegram accepts."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = rest.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return parts


_BOLD = re.compile(r"\*([^*\n]+)\*")


def to_html(text: str) -> str:
    """Plain text with WhatsApp-style ``*bold*`` → Telegram HTML. Everything is escaped first, so customer or
    agent text can never produce markup (or a "can't parse entities" error)."""
    return _BOLD.sub(r"<b>\1</b>", html.escape(text, quote=False))


def display_name(user: Any) -> str | None:
    if user is None:
        return None
    name = " ".join(p for p in (user.first_name, user.last_name) if p).strip()
    return name or (f"@{user.username}" if user.username else None)


def language_hint(user: Any) -> str | None:
    code = getattr(user, "language_code", None)
    return code.split("-")[0].lower()[:2] if code else None


def make_bot(settings: Settings, timeout: int = 20) -> Bot:
    """An aiogram Bot for the configured token, pointed at ``TELEGRAM_API_BASE`` when set."""
    if not settings.telegram_bot_token:
        raise ConfigError("TELEGRAM_BOT_TOKEN is not set; create a bot with @BotFather and put its token there")
    api = TelegramAPIServer.from_base(settings.telegram_api_base) if settings.telegram_api_base else PRODUCTION
    try:
        return Bot(settings.telegram_bot_token, session=AiohttpSession(api=api, timeout=timeout))
    except TokenValidationError as exc:
        raise ConfigError(
            "TELEGRAM_BOT_TOKEN does not look like a bot token (expected '<digits>:<letters>' from @BotFather)"
        ) from exc


@dataclass
class Normalized:
    message: InboundMessage | None = None
    callback_query_id: str | None = None
    ignored: str | None = None  # why nothing is stored
    member_status: tuple[str, str] | None = None  # (chat id, new status) from my_chat_member
    detail: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- rate limits
class RateLimiter:
    """~``per_second`` sends per bot and one send per ``chat_interval`` seconds per chat.

    In one process the limiter reserves time slots in memory. With Redis, several processes share the
    limits: a per-chat key set with ``NX PX`` (only one sender per interval) and a per-second counter for
    the bot.
    """

    def __init__(self, per_second: int = 30, chat_interval: float = 1.0, redis_url: str | None = None,
                 prefix: str = "", bot_id: str = "bot") -> None:
        self.per_second = per_second
        self.chat_interval = chat_interval
        self.redis_url = redis_url
        self.prefix = f"{prefix}tg:rl:{bot_id}:"
        self._redis: Any = None
        self._chat_next: dict[str, float] = {}
        self._buckets: dict[int, int] = {}

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def acquire(self, chat: str, max_wait: float = 25.0) -> None:
        if self.per_second <= 0 and self.chat_interval <= 0:
            return  # limits switched off (a self-hosted Bot API server, benchmarks against a fake)
        if self.redis_url:
            await self._acquire_redis(chat, max_wait)
        else:
            await self._acquire_local(chat)

    async def _acquire_local(self, chat: str) -> None:
        now = time.monotonic()
        slot = max(now, self._chat_next.get(chat, 0.0))
        if len(self._chat_next) > 10_000:  # forget chats whose slot has passed
            self._chat_next = {k: v for k, v in self._chat_next.items() if v > now}
        # bot-wide: at most ``per_second`` sends in each one-second window (as the Redis counter does)
        for _ in range(100_000 if self.per_second > 0 else 0):
            bucket = int(slot)
            if self._buckets.get(bucket, 0) < self.per_second:
                break
            slot = float(bucket + 1)
        bucket = int(slot)
        self._buckets[bucket] = self._buckets.get(bucket, 0) + 1
        if len(self._buckets) > 64:
            self._buckets = {b: n for b, n in self._buckets.items() if b >= int(now) - 1}
        self._chat_next[chat] = slot + self.chat_interval
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _client(self) -> Any:
        if self._redis is None:
            assert self.redis_url is not None
            self._redis = redis_client(self.redis_url)
        return self._redis

    async def _acquire_redis(self, chat: str, max_wait: float) -> None:
        r = await self._client()
        deadline = time.monotonic() + max_wait
        chat_key = f"{self.prefix}chat:{chat}"
        interval_ms = max(1, int(self.chat_interval * 1000))
        for _ in range(10_000 if self.chat_interval > 0 else 0):
            if await r.set(chat_key, b"1", px=interval_ms, nx=True):
                break
            ttl = await r.pttl(chat_key)
            if time.monotonic() > deadline:
                raise TransientSendError("the per-chat rate limit kept this message waiting too long",
                                         retry_after=max(ttl, 0) / 1000 or self.chat_interval)
            await asyncio.sleep(max(ttl, 5) / 1000)
        for _ in range(10_000 if self.per_second > 0 else 0):
            now = time.time()
            second = int(now)
            key = f"{self.prefix}bot:{second}"
            n = await r.incr(key)
            if n == 1:
                await r.expire(key, 3)
            if n <= self.per_second:
                return
            if time.monotonic() > deadline:
                raise TransientSendError("the bot-wide rate limit kept this message waiting too long", retry_after=1)
            await asyncio.sleep(second + 1 - now + 0.001)


# ---------------------------------------------------------------------------------------------- the channel
class TelegramChannel:
    name = CHANNEL

    def __init__(self, rt: Runtime) -> None:
        settings = rt.settings
        assert settings.telegram_bot_token
        self.rt = rt
        self.token = settings.telegram_bot_token
        self.secret = settings.telegram_webhook_secret
        env = settings.env
        self.bot = make_bot(settings)
        self.store = AttachmentStore(settings.data_dir)
        self.max_file_bytes = min(GETFILE_LIMIT, self.store.max_bytes)
        self.limiter = RateLimiter(
            per_second=int(non_negative(env, "TELEGRAM_MAX_PER_SECOND", 30, "switches the limit off")),
            chat_interval=non_negative(env, "TELEGRAM_PER_CHAT_INTERVAL", 1.0, "switches the limit off"),
            redis_url=settings.redis_url,
            prefix=env.get("LOKET_REDIS_PREFIX", ""),
            bot_id=self.token.split(":", 1)[0],
        )
        self.poll_timeout = max(1, int(non_negative(env, "TELEGRAM_POLL_TIMEOUT", 25, "polls with the shortest wait, 1 s")))
        self._send_message_url = self.bot.session.api.api_url(token=self.token, method="sendMessage")
        self._timeout = ClientTimeout(total=float(self.bot.session.timeout))
        self._background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ rendering and sending
    def keyboard(self, reply: Reply) -> dict[str, Any] | None:
        if not reply.choices:
            return None
        rows = [[{"text": c.label[:64] or c.value[:64], "callback_data": callback_data_for(c.value, i)}]
                for i, c in enumerate(reply.choices, 1)]
        return {"inline_keyboard": rows}

    def render(self, out: OutboundMessage) -> list[dict[str, Any]]:
        """The Bot API calls for one reply, in order: attachments, then the text with the keyboard last."""
        reply = out.reply
        chat_id = int(out.address)
        markup = self.keyboard(reply)
        calls: list[dict[str, Any]] = []
        text = reply.text or ""
        atts = list(reply.attachments)
        caption_fits = len(atts) == 1 and len(text) <= CAPTION_LIMIT
        for i, att in enumerate(atts):
            method = "sendPhoto" if att.content_type.startswith("image/") and att.size <= 10 * 1024 * 1024 \
                else "sendDocument"
            call: dict[str, Any] = {"method": method, "chat_id": chat_id, "attachment": att.to_dict()}
            if caption_fits and i == 0:
                if text:
                    call["caption"] = text
                if markup:
                    call["reply_markup"] = markup
            calls.append(call)
        if not caption_fits and (text or not atts):
            parts = split_text(text) if text else ["…"]
            for i, part in enumerate(parts):
                call = {"method": "sendMessage", "chat_id": chat_id, "text": part}
                if markup and i == len(parts) - 1:
                    call["reply_markup"] = markup
                calls.append(call)
        return calls

    def _input_file(self, att: dict[str, Any]) -> Any:
        if att.get("sha256"):
            try:
                data = self.store.read(att["sha256"])
            except (OSError, ValueError) as exc:
                raise PermanentSendError(f"attachment {att.get('filename')!r} is missing from storage") from exc
            return BufferedInputFile(data, filename=att.get("filename") or "file")
        if att.get("url"):
            return att["url"]
        raise PermanentSendError(f"attachment {att.get('filename')!r} has neither stored content nor a URL")

    async def _call(self, call: dict[str, Any]) -> tuple[int, int]:
        """One Bot API call of a reply → (chat id, message id) of the sent message."""
        markup = call.get("reply_markup")
        method = call["method"]
        if method == "sendMessage":
            return await self._send_message(call["chat_id"], to_html(call["text"]), markup)
        kb = None
        if markup:
            kb = InlineKeyboardMarkup(inline_keyboard=[
                [InlineKeyboardButton(text=b["text"], callback_data=b["callback_data"]) for b in row]
                for row in markup["inline_keyboard"]
            ])
        file = self._input_file(call["attachment"])
        caption = to_html(call["caption"]) if call.get("caption") else None
        if method == "sendPhoto":
            sent = await self.bot.send_photo(call["chat_id"], file, caption=caption, parse_mode="HTML",
                                             reply_markup=kb)
        else:
            sent = await self.bot.send_document(call["chat_id"], file, caption=caption, parse_mode="HTML",
                                                reply_markup=kb)
        return sent.chat.id, sent.message_id

    async def _send_message(self, chat_id: int, html_text: str, markup: dict[str, Any] | None) -> tuple[int, int]:
        """``sendMessage`` as one JSON request on aiogram's HTTP session.

        Text replies are most of what a bot sends. aiogram's method call builds a multipart form through its
        models and validates the whole returned ``Message`` (about 1 ms of CPU per reply, the largest single
        cost of a reply); the Bot API takes JSON, and we need two fields of the answer. Anything but a clean
        success goes through aiogram's own ``check_response``, so errors raise the same aiogram exceptions as
        every other call.
        """
        body: dict[str, Any] = {"chat_id": chat_id, "text": html_text, "parse_mode": "HTML"}
        if markup:
            body["reply_markup"] = markup
        session = await cast(AiohttpSession, self.bot.session).create_session()
        try:
            async with session.post(self._send_message_url, data=orjson.dumps(body),
                                    headers=_JSON_HEADERS, timeout=self._timeout) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError as exc:
            raise TelegramNetworkError(method=self._method(body), message="Request timeout error") from exc
        except ClientError as exc:
            raise TelegramNetworkError(method=self._method(body), message=f"{type(exc).__name__}: {exc}") from exc
        if status == 200:
            try:
                data = orjson.loads(raw)
                if data.get("ok") is True:
                    result = data["result"]
                    return int(result["chat"]["id"]), int(result["message_id"])
            except (ValueError, KeyError, TypeError, AttributeError):
                pass  # not the Bot API's answer: aiogram says what is wrong with it
        text = raw.decode("utf-8", "replace")
        response = self.bot.session.check_response(bot=self.bot, method=self._method(body), status_code=status,
                                                   content=text)
        sent = response.result
        if sent is None:
            raise ClientDecodeError("sendMessage answered ok without a message", ValueError("no result"), text)
        return sent.chat.id, sent.message_id

    @staticmethod
    def _method(body: dict[str, Any]) -> SendMessage:
        return SendMessage(chat_id=body["chat_id"], text=body["text"], parse_mode=body.get("parse_mode"))

    async def send(self, out: OutboundMessage) -> ProviderReceipt:
        try:
            chat_id = int(out.address)
        except ValueError as exc:
            raise PermanentSendError(f"{out.address!r} is not a Telegram chat id") from exc
        calls = self.render(out)
        ids: list[str] = []
        for call in calls:
            await self.limiter.acquire(str(chat_id))
            try:
                sent_chat, sent_id = await self._call(call)
            except SendError:
                raise
            except TelegramRetryAfter as exc:
                raise TransientSendError(f"Telegram rate limit: {exc.message}", retry_after=float(exc.retry_after),
                                         code="429") from exc
            except TelegramForbiddenError as exc:
                raise PermanentSendError(f"Telegram refused: {exc.message}", unreachable=True, code="403") from exc
            except TelegramMigrateToChat as exc:
                raise PermanentSendError(f"the chat moved to {exc.migrate_to_chat_id}: {exc.message}",
                                         code="400") from exc
            except TelegramBadRequest as exc:
                unreachable = "chat not found" in exc.message.lower() or "user is deactivated" in exc.message.lower()
                raise PermanentSendError(f"Telegram rejected the message: {exc.message}", unreachable=unreachable,
                                         code="400") from exc
            except TelegramUnauthorizedError as exc:
                raise PermanentSendError("Telegram rejected the bot token (401 Unauthorized); check "
                                         "TELEGRAM_BOT_TOKEN", code="401") from exc
            except TelegramServerError as exc:
                raise TransientSendError(f"Telegram server error: {exc.message}", code="5xx") from exc
            except TelegramNetworkError as exc:
                raise TransientSendError(f"network error talking to Telegram: {exc.message}",
                                         ambiguous="timeout" in exc.message.lower()) from exc
            except ClientDecodeError as exc:
                raise TransientSendError(f"Telegram answered with something that is not the Bot API: {exc}") from exc
            except TelegramAPIError as exc:
                raise PermanentSendError(f"Telegram error: {exc.message}") from exc
            ids.append(f"out:{sent_chat}:{sent_id}")
        return ProviderReceipt(provider_message_id=ids[0] if ids else None, status="sent",
                               detail={"parts": len(ids), "telegram_message_ids": ids} if len(ids) > 1 else {})

    # ------------------------------------------------------------------ inbound
    def parse_update(self, body: bytes) -> Update | TextUpdate:
        if len(body) > MAX_UPDATE_BYTES:
            raise BadUpdate(f"the body is larger than {MAX_UPDATE_BYTES} bytes")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadUpdate(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
            raise BadUpdate("a Telegram Update is a JSON object with an integer 'update_id'")
        if not any(k in data for k in ALLOWED_UPDATES):
            # a kind we do not serve (or one newer than our aiogram): acknowledge it, never fail on it
            kinds = ", ".join(k for k in data if k != "update_id") or "(none)"
            raise UnservedUpdate(f"update {data['update_id']}: type {kinds} is not handled")
        text_update = parse_text_update(data)  # the common case, on a short path (telegram_updates.py)
        if text_update is not None:
            return text_update
        try:
            return Update.model_validate(data, context={"bot": self.bot})
        except ValidationError as exc:
            errors = exc.errors()
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "?"
            what = errors[0]["msg"] if errors else str(exc)
            raise BadUpdate(f"not a valid Telegram Update: {where}: {what}") from exc

    async def normalize(self, upd: Update | TextUpdate) -> Normalized:
        if upd.message is not None:
            return await self._from_message(upd.message, upd.update_id, edited=False)
        if upd.edited_message is not None:
            return await self._from_message(upd.edited_message, upd.update_id, edited=True)
        if upd.callback_query is not None:
            return self._from_callback(upd.callback_query, upd.update_id)
        if upd.my_chat_member is not None:
            return self._from_member(upd.my_chat_member)
        kinds = [k for k, v in upd.model_dump(exclude_none=True).items() if k != "update_id"] or ["(none)"]
        return Normalized(ignored=f"update type {', '.join(kinds)} is not handled")

    async def _from_message(self, m: Message | TextMessage, update_id: int, edited: bool) -> Normalized:
        if m.chat.type != "private":
            return Normalized(ignored=f"messages from {m.chat.type} chats are not served")
        user = m.from_user
        chat = str(m.chat.id)
        base_meta: dict[str, Any] = {"telegram": {"message_id": m.message_id, "update_id": update_id,
                                                  "user_id": user.id if user else None,
                                                  "username": user.username if user else None}}
        common: dict[str, Any] = {
            "channel": CHANNEL, "address": chat, "display_name": display_name(user),
            "language_hint": language_hint(user),
        }
        if edited:
            pid = f"e:{chat}:{m.message_id}:{update_id}"
            meta = {**base_meta, "edited_message_id": m.message_id, "edit_date": m.edit_date}
            return Normalized(InboundMessage(provider_message_id=pid, text=m.text or m.caption or "", kind="edited",
                                             meta=meta, **common))
        pid = f"m:{chat}:{m.message_id}"
        if m.text is not None:
            text = m.text
            if text == "/start" or text.startswith("/start "):
                payload = text[len("/start"):].strip()[:64]
                meta = {**base_meta, "payload": payload} if payload else dict(base_meta)
                for prefix in ("flow_", "flow-"):  # t.me/<bot>?start=flow_<id> opens that flow
                    if payload.startswith(prefix) and len(payload) > len(prefix):
                        meta["start_flow"] = payload[len(prefix):]
                return Normalized(InboundMessage(provider_message_id=pid, text="/start", kind="start", meta=meta,
                                                 **common))
            return Normalized(InboundMessage(provider_message_id=pid, text=text, meta=base_meta, **common))
        if m.contact is not None:
            phone = normalize_phone(m.contact.phone_number)
            own = m.contact.user_id is not None and user is not None and m.contact.user_id == user.id
            meta = {**base_meta, "phone": phone, "own": own, "raw_phone_valid": phone is not None}
            return Normalized(InboundMessage(provider_message_id=pid, text=phone or "", kind="contact", meta=meta,
                                             **common))
        for kind in FILE_KINDS:
            obj = getattr(m, kind, None)
            if obj:
                return Normalized(await self._with_file(m, kind, obj, pid, base_meta, common))
        other = next((k for k in UNSUPPORTED_KINDS if getattr(m, k, None) is not None), None)
        if other is None:
            if not m.caption:
                return Normalized(ignored="a service message without customer content")
            other = "unknown content"
        return Normalized(InboundMessage(provider_message_id=pid, text=m.caption or "", kind="unsupported",
                                         meta={**base_meta, "unsupported": other}, **common))

    async def _with_file(self, m: Message, kind: str, obj: Any, pid: str, base_meta: dict[str, Any],
                         common: dict[str, Any]) -> InboundMessage:
        caption = m.caption or ""
        if kind == "photo":
            sizes = sorted(obj, key=lambda p: (p.file_size or 0, p.width * p.height))
            fitting = [p for p in sizes if (p.file_size or 0) <= self.max_file_bytes]
            target = fitting[-1] if fitting else sizes[-1]
            filename, mime, size = f"photo_{m.message_id}.jpg", "image/jpeg", target.file_size or 0
        else:
            target = obj
            filename = getattr(obj, "file_name", None) or f"{kind}_{m.message_id}"
            mime = getattr(obj, "mime_type", None) or mimetypes.guess_type(filename)[0] or "application/octet-stream"
            size = getattr(obj, "file_size", None) or 0

        def unsupported(reason: str) -> InboundMessage:
            log.info("telegram %s from chat %s not accepted: %s", kind, common["address"], reason)
            return InboundMessage(provider_message_id=pid, text=caption, kind="unsupported",
                                  meta={**base_meta, "unsupported": kind, "reason": reason,
                                        "file": {"name": filename, "mime_type": mime, "size": size}}, **common)

        try:
            self.store.check(filename, mime, size)
            if size > self.max_file_bytes:
                raise AttachmentRejected(f"{filename!r} is {size / 1e6:.1f} MB; Telegram bots can fetch at most "
                                         f"{self.max_file_bytes / 1e6:.0f} MB")
        except AttachmentRejected as exc:
            return unsupported(exc.reason)
        if await inbox_has(self.rt.engine, CHANNEL, pid):  # a redelivery: no need to download again
            return InboundMessage(provider_message_id=pid, text=caption, meta=base_meta, **common)
        try:
            data = await self._download(target.file_id)
            if not filename.count(".") and (ext := mimetypes.guess_extension(mime)):
                filename += ext
            att = self.store.save(data, filename, mime)
        except AttachmentRejected as exc:
            return unsupported(exc.reason)
        except TelegramBadRequest as exc:
            return unsupported(f"Telegram would not hand out the file: {exc.message}")
        except (TelegramAPIError, ClientDecodeError, ClientError, OSError, TimeoutError) as exc:
            return unsupported(f"the file could not be downloaded: {exc}")
        return InboundMessage(provider_message_id=pid, text=caption, attachments=(att,),
                              meta={**base_meta, "media": kind}, **common)

    async def _download(self, file_id: str) -> bytes:
        f = await self.bot.get_file(file_id)
        if not f.file_path:
            raise AttachmentRejected("Telegram gave no file path for the file")
        if f.file_size and f.file_size > self.max_file_bytes:
            raise AttachmentRejected(f"the file is {f.file_size / 1e6:.1f} MB; the limit is "
                                     f"{self.max_file_bytes / 1e6:.0f} MB")
        url = self.bot.session.api.file_url(self.token, f.file_path)
        chunks: list[bytes] = []
        total = 0
        async for chunk in self.bot.session.stream_content(url=url, timeout=60):
            total += len(chunk)
            if total > self.max_file_bytes:
                raise AttachmentRejected(f"the file is larger than {self.max_file_bytes / 1e6:.0f} MB")
            chunks.append(chunk)
        return b"".join(chunks)

    def _from_callback(self, cq: CallbackQuery, update_id: int) -> Normalized:
        msg = cq.message
        chat_id = msg.chat.id if msg is not None else cq.from_user.id
        if msg is not None and msg.chat.type != "private":
            return Normalized(ignored="button presses in group chats are not served", callback_query_id=cq.id)
        data = cq.data or ""
        if not data:
            return Normalized(ignored="a callback query without data", callback_query_id=cq.id)
        label = data
        markup = getattr(msg, "reply_markup", None)
        if markup is not None and getattr(markup, "inline_keyboard", None):
            for row in markup.inline_keyboard:
                for b in row:
                    if b.callback_data == data:
                        label = b.text
        meta = {"telegram": {"update_id": update_id, "callback_query_id": cq.id, "user_id": cq.from_user.id,
                             "message_id": msg.message_id if msg is not None else None}}
        if data.startswith("#") and data[1:].isdigit():
            # a long choice value was sent as its position: the router resolves the number
            text, payload = data[1:], None
        else:
            text, payload = label, data
        inbound = InboundMessage(channel=CHANNEL, address=str(chat_id), provider_message_id=f"cb:{cq.id}",
                                 text=text, button_payload=payload, display_name=display_name(cq.from_user),
                                 language_hint=language_hint(cq.from_user), meta=meta)
        return Normalized(inbound, callback_query_id=cq.id)

    def _from_member(self, upd: ChatMemberUpdated) -> Normalized:
        if upd.chat.type != "private":
            return Normalized(ignored="membership changes in group chats are not tracked")
        return Normalized(member_status=(str(upd.chat.id), upd.new_chat_member.status))

    async def _record_member_status(self, chat: str, status: str) -> None:
        blocked = status == "kicked"
        async with self.rt.engine.begin() as conn:
            await conn.execute(
                update(identities)
                .where(identities.c.channel == CHANNEL, identities.c.address == chat)
                .values(unreachable=blocked,
                        unreachable_reason="the customer blocked the bot on Telegram" if blocked else None)
            )
        log.info("telegram chat %s: bot membership is now %s", chat, status)

    async def process(self, upd: Update | TextUpdate) -> tuple[str, bool]:
        """Normalize and persist one update. Returns (outcome, stored?). Raises if the database fails."""
        norm = await self.normalize(upd)
        if norm.member_status is not None:
            await self._record_member_status(*norm.member_status)
            return "member_status", False
        if norm.message is None:
            log.info("telegram update %s ignored: %s", upd.update_id, norm.ignored)
            if norm.callback_query_id:
                self._answer_callback_later(norm.callback_query_id)
            return "ignored", False
        stored = await self.rt.inbox.submit(norm.message)
        if norm.callback_query_id and stored:
            self._answer_callback_later(norm.callback_query_id)
        return ("stored" if stored else "duplicate"), stored

    def _answer_callback_later(self, query_id: str) -> None:
        """Stop the button's spinner (best effort, after the press is persisted)."""

        async def answer() -> None:
            try:
                await asyncio.wait_for(self.bot.answer_callback_query(query_id), timeout=10)
            except (TelegramAPIError, ClientDecodeError, TimeoutError) as exc:
                log.info("answerCallbackQuery failed (the button keeps spinning a little longer): %s", exc)

        task = asyncio.create_task(answer(), name="telegram-answer-callback")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def webhook(self, request: web.Request) -> web.Response:
        if self.secret is None:
            if self.rt.settings.verify_signatures:
                log.warning("telegram webhook refused: TELEGRAM_WEBHOOK_SECRET is not set (set it, then run "
                            "`loket telegram set-webhook`)")
                return web.json_response({"error": "the webhook secret is not configured on this server"},
                                         status=403)
        else:
            given = request.headers.get(SECRET_HEADER, "")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), self.secret.encode()):
                log.warning("telegram webhook refused from %s: %s secret token", request.remote,
                            "missing" if not given else "wrong")
                return web.json_response({"error": "missing or wrong X-Telegram-Bot-Api-Secret-Token"}, status=403)
        body = await request.read()
        try:
            upd = self.parse_update(body)
        except BadUpdate as exc:
            log.info("telegram webhook: bad request: %s", exc)
            return web.json_response({"error": str(exc)}, status=400)
        except UnservedUpdate as exc:
            log.info("telegram webhook: ignored %s", exc)
            return web.json_response({"ok": True, "outcome": "ignored"})
        try:
            outcome, _ = await self.process(upd)
        except Exception:  # noqa: BLE001 - not stored: a 503 makes Telegram deliver it again
            log.exception("telegram update %s could not be stored", upd.update_id)
            return web.json_response({"error": "temporarily unable to store the update"}, status=503)
        answer = _OUTCOME_BODIES.get(outcome)
        if answer is None:
            return web.json_response({"ok": True, "outcome": outcome})
        return web.Response(body=answer, content_type="application/json")

    # ------------------------------------------------------------------ long polling (development)
    async def poll_forever(self) -> None:
        """getUpdates loop: persist each update, then confirm it by moving the offset past it."""
        await self._retrying(lambda: self.bot.delete_webhook(drop_pending_updates=False), "deleteWebhook")
        log.info("telegram: long polling for updates (webhook removed)")
        offset: int | None = None
        failures = 0
        while True:
            try:
                updates = await self.bot.get_updates(offset=offset, timeout=self.poll_timeout,
                                                     allowed_updates=ALLOWED_UPDATES,
                                                     request_timeout=self.poll_timeout + 10)
                for upd in updates:
                    await self.process(upd)
                    offset = upd.update_id + 1
                failures = 0
            except asyncio.CancelledError:
                raise
            except TelegramConflictError as exc:
                log.warning("telegram: %s; removing the webhook again", exc.message)
                await self._retrying(lambda: self.bot.delete_webhook(drop_pending_updates=False), "deleteWebhook")
            except TelegramRetryAfter as exc:
                await asyncio.sleep(exc.retry_after)
            except TelegramUnauthorizedError:
                log.error("telegram: the bot token was rejected (401); polling stops. Check TELEGRAM_BOT_TOKEN")
                return
            except Exception as exc:  # noqa: BLE001 - network, 5xx, database: back off and go on
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("telegram polling failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _retrying(self, fn: Any, what: str, attempts: int = 5) -> Any:
        for i in range(attempts):
            try:
                return await fn()
            except (TelegramServerError, TelegramNetworkError, ClientDecodeError) as exc:
                if i == attempts - 1:
                    raise
                log.warning("telegram %s failed (%s); retrying", what, exc)
                await asyncio.sleep(0.5 * 2**i)
        return None

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.limiter.close()
        await self.bot.session.close()


# ---------------------------------------------------------------------------------------------- identity hooks
async def telegram_identity_hook(conn: AsyncConnection, msg: InboundMessage, identity: dict[str, Any],
                                 customer: dict[str, Any], pipeline: Any) -> bool:
    """Before routing: keep deep-link payloads, and merge a Telegram customer who shares the phone number
    of a known WhatsApp identity into that customer (one customer, one timeline). Returns whether the
    identity or customer changed (the pipeline then reads them again)."""
    if msg.channel != CHANNEL or msg.kind not in {"start", "contact"}:
        return False
    now = pipeline.clock.now()
    meta = dict(identity["meta"] or {})
    if msg.kind == "start":
        payload = msg.meta.get("payload")
        if not payload:
            return False
        meta["start_payload"] = payload
        meta["start_payloads"] = ([*meta.get("start_payloads", []), payload])[-10:]
        await conn.execute(update(identities).where(identities.c.id == identity["id"]).values(meta=meta))
        await add_touchpoint(conn, customer_id=customer["id"], kind="deep_link", now=now, channel=CHANNEL,
                             actor="customer", payload={"payload": payload})
        return True
    phone = msg.meta.get("phone")
    if not phone:
        return False
    if not msg.meta.get("own"):
        # someone else's contact card: note it, never link identities on it
        await add_touchpoint(conn, customer_id=customer["id"], kind="contact_shared", now=now, channel=CHANNEL,
                             actor="customer", payload={"phone": phone, "own": False})
        return False
    meta["phone"] = phone
    await conn.execute(update(identities).where(identities.c.id == identity["id"]).values(meta=meta))
    wa = (
        await conn.execute(
            select(identities.c.id, identities.c.customer_id)
            .where(identities.c.channel == "whatsapp", identities.c.address == phone)
        )
    ).mappings().first()
    target = wa["customer_id"] if wa is not None else None
    for _ in range(10):  # follow earlier merges to the surviving record
        if target is None:
            break
        nxt = (await conn.execute(select(customers.c.merged_into_id).where(customers.c.id == target))).scalar()
        if nxt is None:
            break
        target = nxt
    if target is not None and target != customer["id"]:
        await merge_customers(conn, source_id=customer["id"], target_id=target, now=now, actor="customer",
                              reason=f"telegram contact {phone} matches the whatsapp identity {wa['id']}"
                              if wa is not None else "telegram contact")
        log.info("telegram identity %s merged into customer %s (shared phone matches WhatsApp)",
                 identity["id"], target)
    else:
        attrs = dict(customer["attributes"] or {})
        if not attrs.get("phone"):
            attrs["phone"] = phone
            await conn.execute(update(customers).where(customers.c.id == customer["id"]).values(attributes=attrs))
        await add_touchpoint(conn, customer_id=customer["id"], kind="contact_shared", now=now, channel=CHANNEL,
                             actor="customer", payload={"phone": phone, "own": True})
    return True


async def contact_step(ctx: RouteContext) -> Decision | None:
    """A shared contact nothing else asked for: thank the customer (the number is already on file)."""
    if ctx.message.channel != CHANNEL or ctx.message.kind != "contact":
        return None
    phone = ctx.message.meta.get("phone")
    if not phone or not ctx.message.meta.get("own"):
        return None
    return Decision().add(Send(Reply(t("telegram.contact_saved", ctx.language, phone=phone), purpose="reply")))


async def edited_step(ctx: RouteContext) -> Decision | None:
    """An edit of an earlier message: recorded on the timeline; the bot does not answer it again."""
    if ctx.message.kind != "edited":
        return None
    return Decision().add(Touch("message_edited", {"text": ctx.message.text[:2000],
                                                   "message_id": ctx.message.meta.get("edited_message_id")}))


EDITED_ORDER = 15  # after the human step (agents see edits), before commands and flows
CONTACT_ORDER = ORDER_FLOW + 5  # after a flow that may be asking for a phone number, before the knowledge base


def setup(rt: Runtime) -> None:
    if not rt.settings.telegram_bot_token:
        return
    channel = TelegramChannel(rt)
    rt.channels.add(channel)
    rt.services["telegram"] = channel
    rt.app.router.add_post(WEBHOOK_PATH, channel.webhook)
    rt.pipeline.pre_route_hooks.append(telegram_identity_hook)
    if "edited_message" not in rt.router.step_names:
        rt.router.add("edited_message", edited_step, EDITED_ORDER)
    rt.router.add("telegram_contact", contact_step, CONTACT_ORDER)
    rt.on_shutdown(channel.close)
    if rt.settings.env.get("TELEGRAM_POLLING", "").lower() in {"1", "true", "yes", "on"}:
        rt.add_task("telegram-poll", channel.poll_forever, roles={"all", "web"})
    if rt.settings.telegram_webhook_secret is None and rt.settings.verify_signatures:
        log.warning("TELEGRAM_WEBHOOK_SECRET is not set: %s answers 403 until it is (polling still works)",
                    WEBHOOK_PATH)
