"""Web chat: an embeddable widget (``GET /widget.js``) talking JSON frames over ``GET /webchat/ws``.

Protocol (DESIGN §13, docs/webchat.md): the visitor token is the browser's credential; the identity's
address is a hash of it, so tokens are never stored. ``client_id`` makes sends idempotent: a resend after
a reconnect is acknowledged again and never processed twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from sqlalchemy import select

from bot.messages import InboundMessage, OutboundMessage, ProviderReceipt
from bot.runtime import Runtime
from storage.models import identities, messages

log = logging.getLogger("loket.webchat")
STATIC = Path(__file__).resolve().parent.parent / "static"
ALLOWED_FIELDS = {
    "message": {"type", "client_id", "text"},
    "choice": {"type", "client_id", "value", "label"},
    "typing": {"type"},
    "ping": {"type"},
}


def visitor_address(token: str) -> str:
    return "v_" + hashlib.sha256(token.encode()).hexdigest()[:32]


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_frame(raw: str | bytes, max_chars: int) -> dict[str, Any]:
    """Validate one client frame; raise ProtocolError with a code the widget can show."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("invalid_utf8", "the frame is not valid UTF-8 text") from exc
    if len(raw) > max_chars * 4 + 512:
        raise ProtocolError("too_large", f"the frame is larger than allowed ({max_chars} characters of text)")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"the frame is not valid JSON: {exc.msg} at {exc.pos}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("invalid_frame", "a frame must be a JSON object with a 'type'")
    kind = data.get("type")
    if kind not in ALLOWED_FIELDS:
        raise ProtocolError("unknown_type", f"unknown frame type {kind!r}; use one of {sorted(ALLOWED_FIELDS)}")
    unknown = set(data) - ALLOWED_FIELDS[kind]
    if unknown:
        raise ProtocolError("unknown_fields", f"unknown fields for {kind!r}: {', '.join(sorted(unknown))}")
    if kind in {"message", "choice"}:
        cid = data.get("client_id")
        if not isinstance(cid, str) or not (8 <= len(cid) <= 64) or not all(c.isalnum() or c in "-_" for c in cid):
            raise ProtocolError("invalid_client_id", "client_id must be 8–64 letters, digits, '-' or '_' (a UUID)")
        field = "text" if kind == "message" else "value"
        value = data.get(field)
        if not isinstance(value, str):
            raise ProtocolError("invalid_text", f"{field!r} must be a string")
        if not value.strip():
            raise ProtocolError("empty", "the message is empty")
        if len(value) > max_chars:
            raise ProtocolError("too_long", f"the message is longer than {max_chars} characters")
        if "\x00" in value:
            raise ProtocolError("invalid_text", "the message contains a NUL character")
    return data


class WebChatHub:
    """Open sockets per visitor address, in this process.

    A socket joins before its history is read (so no reply committed meanwhile is missed) but gets pushes only
    after the history frame: until then they are held and flushed without the ones the history already had.
    """

    def __init__(self) -> None:
        self.sockets: dict[str, set[web.WebSocketResponse]] = defaultdict(set)
        self._held: dict[web.WebSocketResponse, list[dict[str, Any]]] = {}

    def join(self, address: str, ws: web.WebSocketResponse) -> None:
        self._held[ws] = []
        self.sockets[address].add(ws)

    async def history_sent(self, ws: web.WebSocketResponse, ids: set[Any]) -> None:
        held = self._held.get(ws)
        while held:  # pushes arriving while this sends are appended here, so the order holds
            frame = held.pop(0)
            if frame.get("id") not in ids:
                await ws.send_json(frame)
        self._held.pop(ws, None)

    def leave(self, address: str, ws: web.WebSocketResponse) -> None:
        self._held.pop(ws, None)
        self.sockets[address].discard(ws)
        if not self.sockets[address]:
            self.sockets.pop(address, None)

    async def close_all(self, app: web.Application | None = None) -> None:
        """On shutdown: close every socket with 1001 (going away); the widget reconnects to another process."""
        for socks in list(self.sockets.values()):
            for ws in list(socks):
                await ws.close(code=1001, message=b"server restarting")

    async def push(self, address: str, frame: dict[str, Any]) -> int:
        delivered = 0
        for ws in list(self.sockets.get(address, ())):
            if ws.closed:
                continue
            held = self._held.get(ws)
            if held is not None:
                held.append(frame)
                delivered += 1
                continue
            try:
                await ws.send_json(frame)
                delivered += 1
            except (ConnectionError, RuntimeError):
                pass
        return delivered


def message_frame(row: dict[str, Any]) -> dict[str, Any]:
    author = row["author"]
    return {
        "type": "message",
        "id": row["id"],
        "author": "customer" if author == "customer" else author,
        "text": row["body"],
        "choices": row["choices"] or [],
        "created_at": row["created_at"].isoformat() if row["created_at"] else None,
        **({"client_id": row["channel_message_id"].split(":", 1)[1]} if author == "customer"
           and row["channel_message_id"] and ":" in row["channel_message_id"] else {}),
    }


class WebChatChannel:
    name = "webchat"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.hub = WebChatHub()

    def render(self, out: OutboundMessage) -> dict[str, Any]:
        reply = out.reply
        return {
            "type": "message",
            "id": out.message_id,
            "author": reply.author if reply.author in {"bot", "agent"} else "bot",
            "text": reply.text,
            "choices": [c.to_dict() for c in reply.choices],
        }

    async def send(self, out: OutboundMessage) -> ProviderReceipt:
        frame = self.render(out)
        delivered = await self.hub.push(out.address, frame)
        if self.rt.events.redis_url:
            # another web process may hold this visitor's socket
            await self.rt.events.publish([("webchat.deliver", {"address": out.address, "frame": frame})], local=False)
        status = "delivered" if delivered else "sent"
        return ProviderReceipt(provider_message_id=f"wc-{out.message_id}", status=status)

    # --------------------------------------------------------------- HTTP
    async def widget_js(self, request: web.Request) -> web.Response:
        body = (STATIC / "widget.js").read_text(encoding="utf-8")
        return web.Response(text=body, content_type="application/javascript",
                            headers={"Cache-Control": "public, max-age=300"})

    async def demo_page(self, request: web.Request) -> web.Response:
        body = (STATIC / "demo.html").read_text(encoding="utf-8")
        return web.Response(text=body, content_type="text/html")

    async def history(self, address: str, limit: int = 100) -> list[dict[str, Any]]:
        async with self.rt.engine.connect() as conn:
            ident = (
                await conn.execute(
                    select(identities.c.customer_id).where(
                        identities.c.channel == "webchat", identities.c.address == address
                    )
                )
            ).scalar_one_or_none()
            if ident is None:
                return []
            rows = (
                await conn.execute(
                    select(messages)
                    .where(messages.c.customer_id == ident, messages.c.channel == "webchat")
                    .order_by(messages.c.id.desc())
                    .limit(limit)
                )
            ).mappings().all()
        return [message_frame(dict(r)) for r in reversed(rows)]

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        max_chars = self.rt.settings.max_message_chars
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=max(65536, max_chars * 8))
        await ws.prepare(request)
        token = request.query.get("visitor", "")
        if not (20 <= len(token) <= 128) or not all(c.isalnum() or c in "-_" for c in token):
            token = secrets.token_urlsafe(24)
            await ws.send_json({"type": "visitor", "token": token})
        address = visitor_address(token)
        lang = (request.query.get("lang") or "")[:2] or None
        self.hub.join(address, ws)
        try:
            history = await self.history(address)
            await ws.send_json({"type": "history", "messages": history})
            await self.hub.history_sent(ws, {m["id"] for m in history})
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._on_frame(ws, address, msg.data, max_chars, lang)
                elif msg.type == WSMsgType.ERROR:
                    log.info("web chat socket error: %s", ws.exception())
        finally:
            self.hub.leave(address, ws)
        return ws

    async def _on_frame(self, ws: web.WebSocketResponse, address: str, raw: Any, max_chars: int,
                        lang: str | None) -> None:
        try:
            data = parse_frame(raw, max_chars)
        except ProtocolError as exc:
            await ws.send_json({"type": "error", "code": exc.code, "message": exc.message})
            return
        kind = data["type"]
        if kind == "ping":
            await ws.send_json({"type": "pong"})
            return
        if kind == "typing":
            await self.rt.events.publish([("webchat.typing", {"address": address})])
            return
        cid = data["client_id"]
        if kind == "message":
            inbound = InboundMessage(channel="webchat", address=address, provider_message_id=f"{address}:{cid}",
                                     text=data["text"], language_hint=lang)
        else:
            inbound = InboundMessage(channel="webchat", address=address, provider_message_id=f"{address}:{cid}",
                                     text=data.get("label") or data["value"], button_payload=data["value"],
                                     language_hint=lang)
        try:
            await self.rt.inbox.submit(inbound)
        except Exception:  # noqa: BLE001
            log.exception("could not persist a web chat message")
            await ws.send_json({"type": "error", "code": "unavailable",
                                "message": "the message could not be saved; it will be resent"})
            return
        await ws.send_json({"type": "ack", "client_id": cid})
        await ws.send_json({"type": "typing", "author": "bot"})

    async def on_event(self, name: str, payload: dict[str, Any]) -> None:
        if name == "webchat.deliver":
            await self.hub.push(payload["address"], payload["frame"])
        elif name == "agent.typing" and payload.get("channel") == "webchat":
            await self.hub.push(payload["address"], {"type": "typing", "author": "agent"})


def setup(rt: Runtime) -> None:
    channel = WebChatChannel(rt)
    rt.channels.add(channel)
    rt.services["webchat"] = channel
    rt.app.router.add_get("/widget.js", channel.widget_js)
    rt.app.router.add_get("/webchat/ws", channel.websocket)
    rt.app.router.add_get("/", channel.demo_page)
    rt.app.on_shutdown.append(channel.hub.close_all)
    rt.events.subscribe(channel.on_event)
