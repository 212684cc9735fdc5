"""WhatsApp through Twilio (DESIGN §4, docs/whatsapp.md).

Inbound: ``POST /webhooks/twilio/whatsapp`` — Twilio's form post, verified with the SDK's
``RequestValidator`` over the URL Twilio called (rebuilt from ``LOKET_PUBLIC_URL`` so it works behind a
proxy), media downloaded with the account's credentials into the attachment store, persisted, then
answered with empty TwiML. Status callbacks: ``POST /webhooks/twilio/status`` move the message forward
(queued → sent → delivered → read, or failed/undelivered with a readable reason); never backwards.

Outbound: ``Client.messages.create_async`` (twilio SDK, aiohttp transport) pointed at ``TWILIO_API_BASE``.
Inside the 24-hour customer-service window a reply goes out as free-form text (choices as numbered lines,
or as a quick-reply Content template when one is configured); outside it only as the approved template
configured for the reply's purpose in ``TWILIO_TEMPLATES`` — otherwise it is refused with a clear reason
(``precheck`` for agents and the API before anything is queued; ``PermanentSendError`` in the dispatcher).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import mimetypes
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from sqlalchemy import select, update
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator

from bot.attachments import AttachmentRejected, AttachmentStore
from bot.channels.base import PermanentSendError, TransientSendError, numbered_choices
from bot.clock import aware
from bot.config import ConfigError
from bot.messages import Attachment, InboundMessage, OutboundMessage, ProviderReceipt, Reply
from storage.models import conversations, identities, messages
from storage.repositories import add_touchpoint, inbox_has

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("loket.whatsapp")
# The SDK logs ~10 INFO lines per request (URL and headers); keep our logs readable.
sdk_log = logging.getLogger("loket.whatsapp.sdk")
sdk_log.setLevel(logging.WARNING)

CHANNEL = "whatsapp"
WINDOW = timedelta(hours=24)
MAX_BODY = 1600  # Twilio's limit for one message body
MAX_MEDIA = 10
MEDIA_BUDGET_SECONDS = 8.0  # Twilio waits 15 s for our answer; keep well inside it
SEND_TIMEOUT_SECONDS = 20.0
STATUS_LOOKUP_SECONDS = 3.0  # a callback may beat the dispatcher's record of the MessageSid
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
SID = re.compile(r"^[A-Za-z]{2}[0-9A-Za-z]{16,62}$")

# Twilio message statuses → our message status, and how far along each is. A callback only moves forward.
TWILIO_STATUSES = {
    "accepted": "queued", "scheduled": "queued", "queued": "queued", "sending": "queued", "canceled": "failed",
    "sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed", "undelivered": "failed",
    "receiving": None, "received": None, "partially_delivered": "sent",
}
RANK = {"queued": 0, "sent": 1, "failed": 2, "delivered": 3, "read": 4}

ERROR_REASONS: dict[int, str] = {
    63016: "outside the 24-hour window: WhatsApp only allows an approved template until the customer writes again",
    63003: "invalid number: the recipient is not a WhatsApp user",
    63024: "invalid recipient: WhatsApp refused this number",
    63032: "WhatsApp withheld the message from this user (marketing limits)",
    63049: "WhatsApp chose not to deliver this marketing message",
    63018: "rate limit of the WhatsApp sender exceeded",
    63005: "the template or content could not be rendered (check TWILIO_TEMPLATES and its variables)",
    63007: "the sender in TWILIO_WHATSAPP_FROM is not a WhatsApp sender on this Twilio account",
    63013: "the WhatsApp sender's account violates WhatsApp policy",
    63051: "the WhatsApp Business account is locked",
    30003: "unreachable: the phone is off or out of coverage",
    30004: "blocked: the recipient blocked messages from this sender",
    30005: "unknown destination: the number does not exist",
    30006: "landline or unreachable carrier: the number cannot receive messages",
    30007: "filtered by the carrier as spam",
    30008: "unknown delivery error reported by WhatsApp",
    21211: "invalid 'To' number",
    21408: "the Twilio account may not send to this region",
    21610: "the customer unsubscribed (replied STOP)",
    21614: "the number is not a mobile number",
    21617: "the message is longer than 1600 characters",
    21656: "the template variables are invalid",
    21655: "the template (ContentSid) is invalid",
    20003: "Twilio rejected the credentials (check TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN)",
}
# Codes after which the identity cannot be reached until the customer writes again.
UNREACHABLE_CODES = {63003, 63024, 30004, 30005, 30006, 21211, 21610, 21614}


def error_reason(code: int | None, fallback: str = "") -> str:
    if code is None:
        return fallback or "delivery failed (no error code given)"
    known = ERROR_REASONS.get(code)
    if known:
        return f"{known} (Twilio {code})"
    return f"Twilio error {code}" + (f": {fallback}" if fallback else "")


def e164(address: str | None) -> str | None:
    """``whatsapp:+6281…`` → ``+6281…``; None if it is not a phone number in E.164."""
    if not address:
        return None
    phone = address.strip()
    if phone.lower().startswith("whatsapp:"):
        phone = phone[len("whatsapp:"):]
    return phone if E164.match(phone) else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


_last_headers: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "loket_twilio_last_headers", default=None
)


@functools.cache
def _twilio_http() -> type[Any]:
    """The SDK's aiohttp transport with a default timeout, keeping the answer's headers (``Retry-After``)
    for the task that made the request — the SDK's exception does not carry them. The SDK's HTTP and REST
    modules (and ``requests`` under them, ~5 MB) are imported when the first message is sent, so a process
    where WhatsApp is not configured, or that only receives webhooks, never loads them."""
    from twilio.http.async_http_client import AsyncTwilioHttpClient

    class TwilioHttp(AsyncTwilioHttpClient):  # type: ignore[misc]
        async def request(self, method: str, url: str, params: Any = None, data: Any = None, headers: Any = None,
                          auth: Any = None, timeout: float | None = None, allow_redirects: bool = False) -> Any:
            _last_headers.set(None)
            response = await super().request(method, url, params=params, data=data, headers=headers, auth=auth,
                                             timeout=timeout if timeout is not None else self.timeout,
                                             allow_redirects=allow_redirects)
            _last_headers.set({k.lower(): v for k, v in (response.headers or {}).items()})
            return response

    return TwilioHttp


class WhatsAppChannel:
    name = CHANNEL

    def __init__(self, rt: Runtime) -> None:
        s = rt.settings
        assert s.twilio_account_sid and s.twilio_auth_token and s.twilio_whatsapp_from
        self.rt = rt
        self.account_sid = s.twilio_account_sid
        self.auth_token = s.twilio_auth_token
        sender = s.twilio_whatsapp_from.strip()
        if not sender.startswith("whatsapp:"):
            sender = "whatsapp:" + sender
        if e164(sender) is None:
            raise ConfigError(
                f"TWILIO_WHATSAPP_FROM={s.twilio_whatsapp_from!r} is not a WhatsApp sender; "
                "set it to e.g. whatsapp:+14155238886"
            )
        self.sender = sender
        self.api_base = (s.twilio_api_base or "https://api.twilio.com").rstrip("/")
        self.templates: dict[str, str] = dict(s.twilio_templates)
        self.validator = RequestValidator(self.auth_token)
        self.store = AttachmentStore(s.data_dir)
        self.status_callback = s.public_url.rstrip("/") + "/webhooks/twilio/status"
        self._client: Any = None  # twilio.rest.Client, made on first use
        self._http: Any = None
        self._media_session: aiohttp.ClientSession | None = None
        self.media_budget = MEDIA_BUDGET_SECONDS

    # ------------------------------------------------------------------ lifecycle
    def client(self) -> Any:
        if self._client is None:
            from twilio.rest import Client

            self._http = _twilio_http()(timeout=SEND_TIMEOUT_SECONDS, logger=sdk_log)
            client = Client(self.account_sid, self.auth_token, http_client=self._http)
            # The Api domain's base URL is where every v2010 request goes (twilio/base/domain.py).
            client.api.base_url = self.api_base
            self._client = client
        return self._client

    def media_session(self) -> aiohttp.ClientSession:
        if self._media_session is None or self._media_session.closed:
            self._media_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3 * MEDIA_BUDGET_SECONDS))
        return self._media_session

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._media_session is not None:
            await self._media_session.close()

    # ------------------------------------------------------------------ the 24-hour window
    def window_open(self, last_inbound_at: datetime | None, now: datetime) -> bool:
        last = aware(last_inbound_at)
        return last is not None and now - last < WINDOW

    def window_problem(self, reply: Reply, last_inbound_at: datetime | None, now: datetime) -> str | None:
        """Why this reply cannot go out now, or None. Same wording for agents, the API and the dispatcher."""
        if self.window_open(last_inbound_at, now) or self.templates.get(reply.purpose):
            return None
        last = aware(last_inbound_at)
        when = (f"last wrote on WhatsApp at {last.astimezone(UTC):%Y-%m-%d %H:%M} UTC, more than 24 hours ago"
                if last else "has never written to us on WhatsApp")
        return (
            f"The customer {when}, so WhatsApp only accepts an approved template, and no template is configured "
            f"for purpose '{reply.purpose}'. Add one to TWILIO_TEMPLATES (e.g. "
            f'{{"{reply.purpose}": "HX…"}}) or wait until the customer writes again. Nothing was sent.'
        )

    def precheck(self, reply: Reply, identity_row: dict[str, Any], now: datetime) -> str | None:
        if identity_row.get("unreachable"):
            reason = identity_row.get("unreachable_reason") or "marked unreachable"
            return f"The customer cannot be reached on WhatsApp ({reason}) until they write again."
        return self.window_problem(reply, identity_row.get("last_inbound_at"), now)

    # ------------------------------------------------------------------ rendering and sending
    def render(self, out: OutboundMessage, now: datetime | None = None) -> dict[str, Any]:
        """The ``messages.create`` arguments for this reply now (raises PermanentSendError if none fit)."""
        now = now or self.rt.clock.now()
        reply = out.reply
        to = e164(out.address)
        if to is None:
            raise PermanentSendError(f"{out.address!r} is not a WhatsApp number in E.164 form", unreachable=True,
                                     code="21211")
        args: dict[str, Any] = {"to": "whatsapp:" + to, "from_": self.sender, "status_callback": self.status_callback}
        if not self.window_open(out.last_inbound_at, now):
            problem = self.window_problem(reply, out.last_inbound_at, now)
            if problem:
                raise PermanentSendError(problem, code="window_closed")
            args["content_sid"] = self.templates[reply.purpose]
            if reply.template_variables:
                args["content_variables"] = json.dumps({str(k): str(v) for k, v in reply.template_variables.items()},
                                                       ensure_ascii=False)
            return args
        choices = [c.to_dict() for c in reply.choices]
        quick = self.templates.get(f"quick_reply_{len(choices)}") if choices else None
        if quick:
            variables = {"1": reply.text}
            for i, c in enumerate(choices, 1):
                variables[str(2 * i)] = c["label"]
                variables[str(2 * i + 1)] = c["value"]
            args["content_sid"] = quick
            args["content_variables"] = json.dumps(variables, ensure_ascii=False)
            return args
        body = numbered_choices(reply.text, choices)
        if len(body) > MAX_BODY:
            log.warning("message %s is %s characters; cut to Twilio's %s", out.message_id, len(body), MAX_BODY)
            body = body[: MAX_BODY - 1] + "…"
        media = [a.url for a in reply.attachments if a.url and a.url.startswith("https://")]
        if media:
            args["media_url"] = media
        args["body"] = body
        return args

    async def send(self, out: OutboundMessage) -> ProviderReceipt:
        args = self.render(out)
        try:
            msg = await self.client().messages.create_async(**args)
        except TwilioRestException as exc:
            raise self._send_error(exc) from exc
        except TimeoutError as exc:
            raise TransientSendError("Twilio did not answer in time", ambiguous=True) from exc
        except aiohttp.ClientError as exc:
            raise TransientSendError(f"could not reach Twilio: {type(exc).__name__}: {exc}") from exc
        detail: dict[str, Any] = {"twilio_status": msg.status}
        if "content_sid" in args:
            detail["content_sid"] = args["content_sid"]
        if msg.status in {"failed", "undelivered"}:
            raise PermanentSendError(error_reason(msg.error_code, msg.error_message or ""),
                                     unreachable=msg.error_code in UNREACHABLE_CODES, code=str(msg.error_code))
        return ProviderReceipt(provider_message_id=msg.sid, status="sent", detail=detail)

    def _send_error(self, exc: TwilioRestException) -> Exception:
        headers = _last_headers.get() or {}
        code = exc.code if isinstance(exc.code, int) else None
        text = str(exc.msg or "").split(": ", 1)[-1]
        if exc.status == 429:
            return TransientSendError(f"Twilio is rate limiting us (429, code {code})",
                                      retry_after=_retry_after(headers.get("retry-after")), code=str(code))
        if exc.status >= 500:
            return TransientSendError(f"Twilio answered {exc.status}: {text}", code=str(code),
                                      retry_after=_retry_after(headers.get("retry-after")))
        if exc.status in {401, 403} or code == 20003:
            # a configuration problem; retrying lets queued messages go once the credentials are fixed
            return TransientSendError(error_reason(20003), code="20003")
        return PermanentSendError(error_reason(code, text), unreachable=code in UNREACHABLE_CODES, code=str(code))

    # ------------------------------------------------------------------ webhooks
    def public_url_for(self, request: web.Request) -> str:
        """The URL Twilio called: LOKET_PUBLIC_URL's scheme and host, its path prefix, and our path + query."""
        public = urlsplit(self.rt.settings.public_url)
        prefix = public.path.rstrip("/")
        path = request.raw_path
        if prefix and not path.startswith(prefix + "/"):
            path = prefix + path
        return f"{public.scheme}://{public.netloc}{path}"

    async def _verified_form(self, request: web.Request) -> MultiDictProxy[Any] | web.Response:
        form: MultiDictProxy[Any]
        if request.content_type == "application/x-www-form-urlencoded":
            form = await request.post()
        else:
            form = MultiDictProxy(MultiDict())
        if self.rt.settings.verify_signatures:
            signature = request.headers.get("X-Twilio-Signature", "")
            url = self.public_url_for(request)
            if not signature or not self.validator.validate(url, form, signature):
                log.warning("rejected %s: %s X-Twilio-Signature for %s", request.path,
                            "missing" if not signature else "invalid", url)
                return web.Response(status=403, text="invalid or missing X-Twilio-Signature")
        if request.content_type != "application/x-www-form-urlencoded":
            return web.Response(status=400, text="expected an application/x-www-form-urlencoded body")
        account = form.get("AccountSid")
        if account is not None and account != self.account_sid:
            log.warning("rejected %s: AccountSid does not match TWILIO_ACCOUNT_SID", request.path)
            return web.Response(status=403, text="AccountSid does not match this server's Twilio account")
        return form

    async def inbound_webhook(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        if isinstance(form, web.Response):
            return form
        sid = str(form.get("MessageSid") or form.get("SmsMessageSid") or "")
        if not sid:
            return web.Response(status=400, text="MessageSid is required")
        if not SID.match(sid):
            return web.Response(status=400, text="MessageSid is not a Twilio SID")
        raw_from = str(form.get("From") or "")
        if not raw_from:
            return web.Response(status=400, text="From is required")
        if not raw_from.lower().startswith("whatsapp:") or e164(raw_from) is None:
            return web.Response(status=400, text="From must be a WhatsApp address such as whatsapp:+6281234567890")
        try:
            num_media = int(form.get("NumMedia") or 0)
        except ValueError:
            return web.Response(status=400, text="NumMedia must be a whole number")
        if not 0 <= num_media <= MAX_MEDIA:
            return web.Response(status=400, text=f"NumMedia must be between 0 and {MAX_MEDIA}")
        address = e164(raw_from)
        assert address is not None
        if await inbox_has(self.rt.engine, CHANNEL, sid):
            return self._twiml()  # a retry of a message we already hold: no second download
        attachments, rejected = await self._download_media(form, num_media)
        msg = self._normalize(form, sid, address, attachments, rejected)
        try:
            await self.rt.inbox.submit(msg)
        except Exception:  # noqa: BLE001 - Twilio retries when we do not answer 2xx
            log.exception("could not persist WhatsApp message %s", sid)
            return web.Response(status=503, text="could not store the message; please retry")
        return self._twiml()

    @staticmethod
    def _twiml() -> web.Response:
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")

    def _normalize(self, form: MultiDictProxy[Any], sid: str, address: str, attachments: list[Attachment],
                   rejected: list[str]) -> InboundMessage:
        max_chars = self.rt.settings.max_message_chars
        text = str(form.get("Body") or "")
        button_payload = str(form.get("ButtonPayload") or "") or None
        button_text = str(form.get("ButtonText") or "") or None
        meta: dict[str, Any] = {}
        if form.get("WaId"):
            meta["wa_id"] = str(form["WaId"])[:32]
        if button_text:
            meta["button_text"] = button_text[:200]
        if not text and button_text:
            text = button_text
        lat, lon = form.get("Latitude"), form.get("Longitude")
        if lat and lon:
            label = str(form.get("Label") or form.get("Address") or "")[:300]
            meta["location"] = {"latitude": str(lat)[:32], "longitude": str(lon)[:32], "label": label}
            if not text:
                text = f"📍 {label} ({lat}, {lon})" if label else f"📍 {lat}, {lon}"
        if len(text) > max_chars:
            meta["truncated_from"] = len(text)
            text = text[:max_chars]
        kind = "message"
        if rejected:
            meta["unsupported"] = "; ".join(rejected)[:1000]
            if not text.strip() and not attachments:
                kind = "unsupported"
        elif not text.strip() and not attachments and not button_payload:
            # a sticker, reaction or other content Twilio forwards without body or media
            kind = "unsupported"
            meta["unsupported"] = f"WhatsApp message type {str(form.get('MessageType') or 'unknown')[:40]}"
        display = str(form.get("ProfileName") or "").strip()[:300] or None
        return InboundMessage(channel=CHANNEL, address=address, provider_message_id=sid, text=text,
                              button_payload=button_payload[:256] if button_payload else None,
                              display_name=display, attachments=tuple(attachments), kind=kind, meta=meta)

    def _media_auth(self, url: str) -> aiohttp.BasicAuth | None:
        """Account credentials only for Twilio's own media host (or TWILIO_API_BASE), never elsewhere."""
        host = urlsplit(url).netloc.lower()
        trusted = {urlsplit(self.api_base).netloc.lower(), "api.twilio.com"}
        if host in trusted or host.endswith(".twilio.com"):
            return aiohttp.BasicAuth(self.account_sid, self.auth_token)
        return None

    async def _download_media(self, form: MultiDictProxy[Any], count: int) -> tuple[list[Attachment], list[str]]:
        attachments: list[Attachment] = []
        rejected: list[str] = []
        if count == 0:
            return attachments, rejected
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.media_budget
        for i in range(count):
            url = str(form.get(f"MediaUrl{i}") or "")
            ctype = str(form.get(f"MediaContentType{i}") or "").split(";")[0].strip().lower() or None
            if not url.startswith(("https://", "http://")):
                rejected.append(f"media {i + 1} has no usable URL")
                continue
            ext = (mimetypes.guess_extension(ctype) if ctype else None) or ""
            filename = f"whatsapp-{i + 1}{ext}"
            try:
                self.store.check(filename, ctype, 0)
            except AttachmentRejected as exc:
                rejected.append(exc.reason)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                attachments.append(Attachment(filename=filename, content_type=ctype or "application/octet-stream",
                                              size=0, url=url))
                continue
            try:
                async with asyncio.timeout(remaining):
                    data, got_type = await self._fetch(url)
                attachments.append(self.store.save(data, filename, ctype or got_type))
            except AttachmentRejected as exc:
                rejected.append(exc.reason)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("could not download WhatsApp media %s: %s", i + 1, exc)
                # keep the reference so an agent sees that something was sent
                attachments.append(Attachment(filename=filename, content_type=ctype or "application/octet-stream",
                                              size=0, url=url))
        return attachments, rejected

    async def _fetch(self, url: str) -> tuple[bytes, str | None]:
        limit = self.store.max_bytes
        async with self.media_session().get(url, auth=self._media_auth(url), allow_redirects=True) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                                  message=f"media download answered {resp.status}")
            if resp.content_length is not None and resp.content_length > limit:
                raise AttachmentRejected(
                    f"the media is {resp.content_length / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(65536):
                size += len(chunk)
                if size > limit:
                    raise AttachmentRejected(f"the media is larger than the {limit / 1e6:.0f} MB limit")
                chunks.append(chunk)
            return b"".join(chunks), resp.content_type

    # ------------------------------------------------------------------ status callbacks
    async def status_webhook(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        if isinstance(form, web.Response):
            return form
        sid = str(form.get("MessageSid") or form.get("SmsSid") or "")
        twilio_status = str(form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        if not sid:
            return web.Response(status=400, text="MessageSid is required")
        if not twilio_status:
            return web.Response(status=400, text="MessageStatus is required")
        if twilio_status not in TWILIO_STATUSES:
            return web.Response(status=400, text=f"unknown MessageStatus {twilio_status[:40]!r}")
        raw_code = str(form.get("ErrorCode") or "").strip()
        code = int(raw_code) if raw_code.isdigit() else None
        status = TWILIO_STATUSES[twilio_status]
        if status is None:
            return web.Response(status=200, text="")
        row = await self._find_outbound(sid)
        if row is None:
            log.info("status %s for unknown WhatsApp message %s ignored", twilio_status, sid)
            return web.Response(status=200, text="")
        await self._apply_status(row, sid, status, twilio_status, code)
        return web.Response(status=200, text="")

    async def _find_outbound(self, sid: str) -> dict[str, Any] | None:
        deadline = asyncio.get_running_loop().time() + STATUS_LOOKUP_SECONDS
        while True:
            async with self.rt.engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(messages.c.id, messages.c.status, messages.c.conversation_id, messages.c.customer_id)
                        .where(messages.c.channel == CHANNEL, messages.c.channel_message_id == sid,
                               messages.c.direction == "out")
                    )
                ).mappings().first()
            if row is not None:
                return dict(row)
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(0.1)

    async def _apply_status(self, row: dict[str, Any], sid: str, status: str, twilio_status: str,
                            code: int | None) -> None:
        if RANK.get(str(row.get("status")), -1) >= RANK[status]:
            return  # a repeated or late callback: nothing moves, so no write transaction (the UPDATE guards races)
        now = self.rt.clock.now()
        lower = [s for s, r in RANK.items() if r < RANK[status]]
        values: dict[str, Any] = {"status": status}
        reason = None
        if status == "failed":
            reason = error_reason(code, twilio_status)
            if twilio_status == "undelivered":
                reason = "undelivered: " + reason
            values["error"] = reason
        elif status in {"delivered", "read"}:
            values["error"] = None
        events: list[tuple[str, dict[str, Any]]] = []
        async with self.rt.engine.begin() as conn:
            changed = (
                await conn.execute(
                    update(messages).where(messages.c.id == row["id"], messages.c.status.in_(lower)).values(**values)
                )
            ).rowcount
            if not changed:
                return  # a duplicate or a late, older status: nothing moves backwards
            if status in {"delivered", "read"}:
                await conn.execute(
                    update(messages).where(messages.c.id == row["id"], messages.c.delivered_at.is_(None))
                    .values(delivered_at=now)
                )
            payload: dict[str, Any] = {"status": status, "provider_status": twilio_status,
                                       "provider_message_id": sid}
            if code is not None:
                payload["error_code"] = code
            if reason:
                payload["error"] = reason
            await add_touchpoint(conn, customer_id=row["customer_id"], conversation_id=row["conversation_id"],
                                 message_id=row["id"], kind="delivery", now=now, channel=CHANNEL, payload=payload)
            if status == "failed" and code in UNREACHABLE_CODES:
                await self._mark_unreachable(conn, row, reason or "")
            event = {"message_id": row["id"], "conversation_id": row["conversation_id"],
                     "customer_id": row["customer_id"], "channel": CHANNEL, "status": status}
            if reason:
                event["error"] = reason
            events.append(("message.status", event))
            await self.rt.pipeline.run_sinks(conn, events, now)
        await self.rt.events.publish(events)

    async def _mark_unreachable(self, conn: Any, row: dict[str, Any], reason: str) -> None:
        identity_id = (
            await conn.execute(select(conversations.c.identity_id).where(conversations.c.id == row["conversation_id"]))
        ).scalar_one()
        await conn.execute(
            update(identities).where(identities.c.id == identity_id)
            .values(unreachable=True, unreachable_reason=reason)
        )


def setup(rt: Runtime) -> None:
    s = rt.settings
    if not (s.twilio_account_sid and s.twilio_auth_token and s.twilio_whatsapp_from):
        log.info("WhatsApp is off: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_WHATSAPP_FROM to enable it")
        return
    channel = WhatsAppChannel(rt)
    for purpose, sid in channel.templates.items():
        if not (isinstance(sid, str) and re.match(r"^HX[0-9a-fA-F]{32}$", sid)):
            raise ConfigError(
                f"TWILIO_TEMPLATES[{purpose!r}]={sid!r} is not a Content SID; use the HX… SID of an approved template"
            )
    rt.channels.add(channel)
    rt.services["whatsapp"] = channel
    rt.app.router.add_post("/webhooks/twilio/whatsapp", channel.inbound_webhook)
    rt.app.router.add_post("/webhooks/twilio/status", channel.status_webhook)
    rt.on_shutdown(channel.close)
