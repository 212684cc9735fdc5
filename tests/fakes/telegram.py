"""A protocol-faithful fake of the Telegram Bot API, served over real HTTP on 127.0.0.1 (ephemeral port).

Written from the Bot API reference (https://core.telegram.org/bots/api):

* methods at ``/bot<token>/<method>`` (method names case-insensitive), parameters from the query string,
  a JSON body, an ``application/x-www-form-urlencoded`` body or ``multipart/form-data`` (where object
  parameters such as ``reply_markup`` arrive JSON-encoded as strings, and files as parts);
* answers ``{"ok": true, "result": …}`` or ``{"ok": false, "error_code": …, "description": …,
  "parameters": {"retry_after": …}}`` with the same HTTP status as ``error_code``;
* files at ``/file/bot<token>/<file_path>``; ``getFile`` refuses files over 20 MB like the cloud API;
* ``getUpdates`` with ``offset`` confirmation (negative offsets too), ``limit``, long-poll ``timeout`` and
  ``allowed_updates``, and the 409 conflict while a webhook is set;
* delivering an update to the webhook with ``X-Telegram-Bot-Api-Secret-Token``.

Knobs for tests: ``fail_next`` (429 with ``retry_after`` or 5xx, for the next N sends), ``block`` a chat,
``sent`` (every message the bot sent: chat, text, reply markup, time), ``add_file`` for ``getFile``.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

SEND_METHODS = {"sendmessage", "sendphoto", "senddocument"}
GETFILE_LIMIT = 20 * 1024 * 1024
JSON_PARAMS = {"reply_markup", "allowed_updates", "entities", "caption_entities", "link_preview_options",
               "reply_parameters"}
HTML_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre", "tg-spoiler",
             "span", "blockquote", "tg-emoji"}
# what a method call asked for, kept on the request for middlewares (fault injection in tests)
PARAMS: web.RequestKey[dict[str, Any]] = web.RequestKey("fake_telegram_params", dict)
SECRET_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class ApiError(Exception):
    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after


@dataclass
class SentMessage:
    method: str
    chat_id: int
    message_id: int
    text: str | None
    caption: str | None
    reply_markup: dict[str, Any] | None
    at: float  # time.monotonic()
    file_name: str | None = None
    file_bytes: bytes | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        rows = (self.reply_markup or {}).get("inline_keyboard") or []
        return [b for row in rows for b in row]


@dataclass
class _File:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    size: int  # announced size (may exceed len(data) to simulate a huge file cheaply)


class FakeTelegram:
    """``async with FakeTelegram(token) as tg:`` — ``tg.base_url`` goes into ``TELEGRAM_API_BASE``."""

    def __init__(self, token: str = "123:ABC", bot_username: str = "loket_test_bot", *,
                 route_prefix: str = "", middlewares: Sequence[Any] = ()) -> None:
        """``route_prefix`` (e.g. ``/via/{sender}``) is matched before ``/bot<token>/…``, so a test can tell the
        callers apart by their ``TELEGRAM_API_BASE``; ``middlewares`` wrap every method call (fault injection)."""
        self.token = token
        self.route_prefix = route_prefix
        self.middlewares = tuple(middlewares)
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_username = bot_username
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        # state
        self.chats: dict[int, dict[str, Any]] = {}
        self.blocked: set[int] = set()
        self._msg_ids: dict[int, int] = {}
        self.sent: list[SentMessage] = []
        self.calls: list[tuple[str, dict[str, Any], float]] = []
        self.callback_answers: list[dict[str, Any]] = []
        self._open_callbacks: set[str] = set()
        self.files: dict[str, _File] = {}
        self.webhook: dict[str, Any] = {"url": ""}
        self.updates: list[dict[str, Any]] = []  # unconfirmed, for getUpdates
        self._update_id = 100_000
        self._new_update = asyncio.Event()
        self._failures: list[tuple[int, str, int | None]] = []
        self.fail_methods = set(SEND_METHODS)

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=60 * 1024 * 1024, middlewares=self.middlewares)
        app.router.add_route("*", self.route_prefix + "/bot{token}/{method}", self._method)
        app.router.add_get(self.route_prefix + "/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server  # noqa: SLF001 - the bound port of port 0
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        self._client = aiohttp.ClientSession()

    async def stop(self) -> None:
        self._new_update.set()
        if self._client:
            await self._client.close()
        if self._runner:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ knobs
    def fail_next(self, n: int, status: int = 429, retry_after: int | None = 1, description: str | None = None) -> None:
        """The next ``n`` calls of a send method fail with ``status`` (429 carries ``retry_after``)."""
        if description is None:
            description = (f"Too Many Requests: retry after {retry_after}" if status == 429
                           else {500: "Internal Server Error", 502: "Bad Gateway"}.get(status, "Internal Server Error"))
        for _ in range(n):
            self._failures.append((status, description, retry_after if status == 429 else None))

    @classmethod
    def error_response(cls, status: int, retry_after: int = 1) -> web.Response:
        """The Bot API's error answer for ``status`` (429 carries ``parameters.retry_after``)."""
        if status == 429:
            return cls._error(ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after))
        return cls._error(ApiError(status, {500: "Internal Server Error", 502: "Bad Gateway"}.get(
            status, "Service Unavailable")))

    def block(self, chat_id: int) -> None:
        self.blocked.add(chat_id)

    def add_chat(self, chat_id: int, first_name: str = "Budi", language_code: str | None = "id",
                 username: str | None = None) -> dict[str, Any]:
        user = {"id": chat_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        self.chats[chat_id] = user
        return user

    def add_file(self, data: bytes, *, path: str, size: int | None = None) -> dict[str, Any]:
        """Hold a file for ``getFile``; returns the file's ``file_id``/``file_unique_id``/``file_size``."""
        fid = "AgAC" + secrets.token_urlsafe(24)
        f = _File(fid, secrets.token_urlsafe(8), path, data, size if size is not None else len(data))
        self.files[fid] = f
        return {"file_id": fid, "file_unique_id": f.file_unique_id, "file_size": f.size}

    def sent_to(self, chat_id: int) -> list[SentMessage]:
        return [m for m in self.sent if m.chat_id == chat_id]

    def calls_of(self, method: str) -> list[dict[str, Any]]:
        return [p for m, p, _ in self.calls if m == method.lower()]

    # ------------------------------------------------------------------ building updates (what a user does)
    def _next_message_id(self, chat_id: int) -> int:
        self._msg_ids[chat_id] = self._msg_ids.get(chat_id, 0) + 1
        return self._msg_ids[chat_id]

    def _user(self, chat_id: int) -> dict[str, Any]:
        return self.chats.get(chat_id) or self.add_chat(chat_id)

    def _chat(self, chat_id: int) -> dict[str, Any]:
        u = self._user(chat_id)
        chat = {"id": chat_id, "type": "private", "first_name": u["first_name"]}
        if "username" in u:
            chat["username"] = u["username"]
        return chat

    def _wrap(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self._update_id += 1
        return {"update_id": self._update_id, kind: obj}

    def user_message(self, chat_id: int, text: str | None = None, **extra: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "from": self._user(chat_id),
            "chat": self._chat(chat_id),
            "date": int(time.time()),
        }
        if text is not None:
            msg["text"] = text
            if text.startswith("/"):
                cmd = text.split()[0]
                msg["entities"] = [{"type": "bot_command", "offset": 0, "length": len(cmd)}]
        msg.update(extra)
        return self._wrap("message", msg)

    def photo_message(self, chat_id: int, data: bytes, caption: str | None = None,
                      size: int | None = None) -> dict[str, Any]:
        big = self.add_file(data, path=f"photos/file_{len(self.files)}.jpg", size=size)
        thumb = self.add_file(data[:200], path=f"photos/thumb_{len(self.files)}.jpg")
        photo = [{**thumb, "width": 90, "height": 90}, {**big, "width": 1280, "height": 960}]
        extra: dict[str, Any] = {"photo": photo}
        if caption:
            extra["caption"] = caption
        return self.user_message(chat_id, None, **extra)

    def document_message(self, chat_id: int, data: bytes, file_name: str, mime_type: str,
                         size: int | None = None, caption: str | None = None) -> dict[str, Any]:
        f = self.add_file(data, path=f"documents/file_{len(self.files)}_{file_name}", size=size)
        extra: dict[str, Any] = {"document": {**f, "file_name": file_name, "mime_type": mime_type}}
        if caption:
            extra["caption"] = caption
        return self.user_message(chat_id, None, **extra)

    def contact_message(self, chat_id: int, phone: str, own: bool = True) -> dict[str, Any]:
        u = self._user(chat_id)
        contact = {"phone_number": phone, "first_name": u["first_name"]}
        if own:
            contact["user_id"] = chat_id
        return self.user_message(chat_id, None, contact=contact)

    def sticker_message(self, chat_id: int) -> dict[str, Any]:
        f = self.add_file(b"RIFF....WEBP", path="stickers/file.webp")
        sticker = {**f, "type": "regular", "width": 512, "height": 512, "is_animated": False,
                   "is_video": False, "emoji": "\U0001f44d"}
        return self.user_message(chat_id, None, sticker=sticker)

    def edited_message(self, update: dict[str, Any], new_text: str) -> dict[str, Any]:
        msg = dict(update["message"])
        msg["text"] = new_text
        msg["edit_date"] = int(time.time())
        return self._wrap("edited_message", msg)

    def callback_press(self, chat_id: int, data: str, sent: SentMessage | None = None) -> dict[str, Any]:
        """The user presses an inline button with ``data`` under the bot's message ``sent``."""
        cq_id = str(secrets.randbits(60))
        self._open_callbacks.add(cq_id)
        cq: dict[str, Any] = {"id": cq_id, "from": self._user(chat_id), "chat_instance": "-8123", "data": data}
        if sent is not None:
            message: dict[str, Any] = {"message_id": sent.message_id, "chat": self._chat(chat_id),
                                       "date": int(time.time()),
                                       "from": {"id": self.bot_id, "is_bot": True, "first_name": "Loket",
                                                "username": self.bot_username}}
            if sent.text is not None:
                message["text"] = sent.text
            if sent.reply_markup:
                message["reply_markup"] = sent.reply_markup
            cq["message"] = message
        return self._wrap("callback_query", cq)

    def raw_update(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._wrap(kind, obj)

    # ------------------------------------------------------------------ delivering updates
    async def post_update(self, update: dict[str, Any] | bytes | str, secret: str | None = None,
                          url: str | None = None) -> tuple[int, str]:
        """POST one update to the webhook (as Telegram does); returns (HTTP status, body)."""
        assert self._client is not None
        target = url or self.webhook.get("url")
        if not target:
            raise RuntimeError("no webhook set: call setWebhook first or pass url=")
        if secret is None:
            secret = self.webhook.get("secret_token")
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        body = update if isinstance(update, (bytes, str)) else json.dumps(update)
        async with self._client.post(target, data=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status, await resp.text()

    def enqueue(self, update: dict[str, Any]) -> None:
        """Queue an update for ``getUpdates`` (long polling)."""
        self.updates.append(update)
        self._new_update.set()

    # ------------------------------------------------------------------ HTTP
    async def _params(self, request: web.Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
        params: dict[str, Any] = dict(request.query)
        files: dict[str, tuple[str, bytes]] = {}
        ctype = request.content_type
        if request.method == "POST" and request.can_read_body:
            if ctype == "application/json":
                try:
                    body = await request.json()
                except json.JSONDecodeError as exc:
                    raise ApiError(400, "Bad Request: can't parse JSON object") from exc
                if not isinstance(body, dict):
                    raise ApiError(400, "Bad Request: can't parse JSON object")
                params.update(body)
            elif ctype == "multipart/form-data":
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    assert isinstance(part, aiohttp.BodyPartReader)
                    name = part.name or ""
                    if part.filename:
                        files[name] = (part.filename, bytes(await part.read()))
                    else:
                        params[name] = await part.text()
            else:
                form = await request.post()
                for k, v in form.items():
                    if isinstance(v, str):
                        params[k] = v
                    elif isinstance(v, web.FileField):
                        files[k] = (v.filename, v.file.read())
                    else:
                        params[k] = bytes(v).decode("utf-8", "replace")
        for k in list(params):
            if k in JSON_PARAMS and isinstance(params[k], str):
                try:
                    params[k] = json.loads(params[k])
                except json.JSONDecodeError as exc:
                    raise ApiError(400, f"Bad Request: can't parse {k} JSON object") from exc
        return params, files

    @staticmethod
    def _reply(result: Any, description: str | None = None) -> web.Response:
        body: dict[str, Any] = {"ok": True, "result": result}
        if description:
            body["description"] = description
        return web.json_response(body)

    @staticmethod
    def _error(err: ApiError) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": err.code, "description": err.description}
        if err.retry_after is not None:
            body["parameters"] = {"retry_after": err.retry_after}
        return web.json_response(body, status=err.code)

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._error(ApiError(401, "Unauthorized"))
        method = request.match_info["method"].lower()
        try:
            params, files = await self._params(request)
            request[PARAMS] = params  # for middlewares: what was asked
            self.calls.append((method, params, time.monotonic()))
            handler = getattr(self, f"_m_{method}", None)
            if handler is None:
                raise ApiError(404, "Not Found")
            if method in self.fail_methods and self._failures:
                status, description, retry_after = self._failures.pop(0)
                raise ApiError(status, description, retry_after)
            return await handler(params, files)
        except ApiError as err:
            return self._error(err)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        path = request.match_info["path"]
        for f in self.files.values():
            if f.file_path == path:
                return web.Response(body=f.data, content_type="application/octet-stream")
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)

    # ------------------------------------------------------------------ methods
    def _bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Loket", "username": self.bot_username}

    async def _m_getme(self, p: dict[str, Any], f: Any) -> web.Response:
        return self._reply({**self._bot_user(), "can_join_groups": True, "can_read_all_group_messages": False,
                            "supports_inline_queries": False})

    async def _m_setwebhook(self, p: dict[str, Any], f: Any) -> web.Response:
        url = str(p.get("url") or "")
        secret = p.get("secret_token")
        if secret is not None:
            secret = str(secret)
            if not (1 <= len(secret) <= 256) or not set(secret) <= SECRET_CHARS:
                raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        if url and not url.startswith(("http://", "https://")):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        if not url:
            self.webhook = {"url": ""}
            return self._reply(True, "Webhook was deleted")
        if str(p.get("drop_pending_updates", "")).lower() in {"true", "1"}:
            self.updates.clear()
        self.webhook = {"url": url, "secret_token": secret, "allowed_updates": p.get("allowed_updates"),
                        "max_connections": int(p.get("max_connections") or 40)}
        return self._reply(True, "Webhook was set")

    async def _m_deletewebhook(self, p: dict[str, Any], f: Any) -> web.Response:
        if str(p.get("drop_pending_updates", "")).lower() in {"true", "1"}:
            self.updates.clear()
        was = bool(self.webhook.get("url"))
        self.webhook = {"url": ""}
        return self._reply(True, "Webhook was deleted" if was else "Webhook is already deleted")

    async def _m_getwebhookinfo(self, p: dict[str, Any], f: Any) -> web.Response:
        info: dict[str, Any] = {"url": self.webhook.get("url", ""), "has_custom_certificate": False,
                                "pending_update_count": len(self.updates)}
        if self.webhook.get("url"):
            info["max_connections"] = self.webhook.get("max_connections", 40)
            if self.webhook.get("allowed_updates"):
                info["allowed_updates"] = self.webhook["allowed_updates"]
        return self._reply(info)

    async def _m_getupdates(self, p: dict[str, Any], f: Any) -> web.Response:
        if self.webhook.get("url"):
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                "use deleteWebhook to delete the webhook first")
        offset = int(p.get("offset") or 0)
        limit = max(1, min(100, int(p.get("limit") or 100)))
        timeout = max(0.0, min(50.0, float(p.get("timeout") or 0)))
        allowed = p.get("allowed_updates") or None
        if offset < 0:
            self.updates = self.updates[offset:]
        elif offset > 0:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout
        while True:
            ready = [u for u in self.updates if not allowed or any(k in u for k in allowed)]
            if ready or time.monotonic() >= deadline:
                return self._reply(ready[:limit])
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass

    def _check_chat(self, p: dict[str, Any]) -> int:
        raw = p.get("chat_id")
        if raw in (None, ""):
            raise ApiError(400, "Bad Request: chat_id is empty")
        try:
            chat_id = int(raw)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "Bad Request: chat not found") from exc
        if chat_id not in self.chats:
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat_id

    @staticmethod
    def _check_markup(markup: Any) -> None:
        if markup is None:
            return
        if not isinstance(markup, dict):
            raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        for row in markup.get("inline_keyboard") or []:
            for button in row:
                if not button.get("text"):
                    raise ApiError(400, "Bad Request: text buttons are unallowed in the inline keyboard")
                data = button.get("callback_data")
                if data is not None and not (1 <= len(str(data).encode()) <= 64):
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")

    def _record(self, method: str, chat_id: int, p: dict[str, Any], text: str | None, caption: str | None,
                file_name: str | None = None, file_bytes: bytes | None = None) -> dict[str, Any]:
        mid = self._next_message_id(chat_id)
        markup = p.get("reply_markup")
        self.sent.append(SentMessage(method, chat_id, mid, text, caption, markup, time.monotonic(),
                                     file_name, file_bytes, dict(p)))
        msg: dict[str, Any] = {"message_id": mid, "from": self._bot_user(), "chat": self._chat(chat_id),
                               "date": int(time.time())}
        if text is not None:
            msg["text"] = text
        if caption:
            msg["caption"] = caption
        if markup:
            msg["reply_markup"] = markup
        return msg

    @staticmethod
    def _parse_entities(text: str, parse_mode: Any) -> str:
        """The text as Telegram stores it: markup removed (HTML mode: only known, well-formed tags)."""
        if parse_mode != "HTML":
            return text
        stack: list[str] = []
        for m in re.finditer(r"<(/?)([a-z-]+)[^>]*>", text):
            closing, tag = m.group(1), m.group(2)
            if tag not in HTML_TAGS:
                raise ApiError(400, f"Bad Request: can't parse entities: Unsupported start tag \"{tag}\"")
            if not closing:
                stack.append(tag)
            elif not stack or stack.pop() != tag:
                raise ApiError(400, f"Bad Request: can't parse entities: Unexpected end tag \"{tag}\"")
        if stack:
            raise ApiError(400, "Bad Request: can't parse entities: Can't find end tag corresponding to start tag")
        return html.unescape(re.sub(r"<[^>]+>", "", text))

    async def _m_sendmessage(self, p: dict[str, Any], f: Any) -> web.Response:
        chat_id = self._check_chat(p)
        text = self._parse_entities(str(p.get("text") or ""), p.get("parse_mode"))
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        self._check_markup(p.get("reply_markup"))
        return self._reply(self._record("sendmessage", chat_id, p, text, None))

    async def _send_file(self, method: str, field_name: str, p: dict[str, Any],
                         files: dict[str, tuple[str, bytes]]) -> web.Response:
        chat_id = self._check_chat(p)
        caption = p.get("caption")
        if caption is not None:
            caption = self._parse_entities(str(caption), p.get("parse_mode"))
        if caption is not None and len(caption) > 1024:
            raise ApiError(400, "Bad Request: message caption is too long")
        self._check_markup(p.get("reply_markup"))
        ref = p.get(field_name)
        if field_name in files:
            name, data = files[field_name]
        elif isinstance(ref, str) and ref.startswith("attach://") and ref[9:] in files:
            name, data = files[ref[9:]]
        elif isinstance(ref, str) and ref in self.files:
            name, data = self.files[ref].file_path, self.files[ref].data
        elif isinstance(ref, str) and ref.startswith(("http://", "https://")):
            name, data = ref.rsplit("/", 1)[-1], b""
        else:
            raise ApiError(400, f"Bad Request: there is no {field_name} in the request")
        msg = self._record(method, chat_id, p, None, str(caption) if caption else None, name, data)
        stored = self.add_file(data, path=f"{field_name}s/sent_{len(self.files)}_{name}")
        if field_name == "photo":
            msg["photo"] = [{**stored, "width": 800, "height": 600}]
        else:
            msg["document"] = {**stored, "file_name": name}
        return self._reply(msg)

    async def _m_sendphoto(self, p: dict[str, Any], files: dict[str, tuple[str, bytes]]) -> web.Response:
        return await self._send_file("sendphoto", "photo", p, files)

    async def _m_senddocument(self, p: dict[str, Any], files: dict[str, tuple[str, bytes]]) -> web.Response:
        return await self._send_file("senddocument", "document", p, files)

    async def _m_answercallbackquery(self, p: dict[str, Any], f: Any) -> web.Response:
        qid = str(p.get("callback_query_id") or "")
        if qid not in self._open_callbacks:
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self._open_callbacks.discard(qid)
        self.callback_answers.append(dict(p))
        return self._reply(True)

    async def _m_getfile(self, p: dict[str, Any], f: Any) -> web.Response:
        fid = str(p.get("file_id") or "")
        found = self.files.get(fid)
        if found is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        if found.size > GETFILE_LIMIT:
            raise ApiError(400, "Bad Request: file is too big")
        return self._reply({"file_id": found.file_id, "file_unique_id": found.file_unique_id,
                            "file_size": found.size, "file_path": found.file_path})
