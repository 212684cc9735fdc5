"""A protocol-faithful fake of the parts of Twilio's REST API and webhooks that Loket uses.

Written from Twilio's documented wire format (and read against twilio-python 9.13):

* ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` — HTTP Basic auth ``AccountSid:AuthToken``,
  form-encoded ``To``, ``From``, ``Body``, ``StatusCallback``, ``ContentSid``, ``ContentVariables``,
  ``MediaUrl`` (repeatable) …; answers ``201`` with the Message resource JSON, or a Twilio error
  ``{"code": …, "message": …, "more_info": …, "status": …}``.
* Media held at ``/2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media/{MediaSid}``, which
  (like Twilio's, with HTTP auth enabled) need Basic auth.
* Webhooks to Loket: inbound messages and status callbacks, form-encoded and signed the way Twilio signs
  them: ``X-Twilio-Signature = base64(HMAC-SHA1(auth_token, url + key1 + value1 + key2 + value2 …))`` with
  the POST parameters sorted by name (our own implementation, not the SDK's).
* The WhatsApp 24-hour window: a free-form ``Body`` to a number whose last inbound message (as posted by
  this fake) is more than 24 h old — by ``clock`` — is accepted (201) and then fails with error 63016,
  reported on the resource and by a ``failed`` status callback, exactly as Twilio does it.

Fault injection: ``fail_next(n, status, retry_after=…)`` queues error answers (429 with ``Retry-After``,
5xx, any 4xx code), ``delay`` slows every API answer down, ``media_delay`` every media download. Every created
message is kept in ``messages``; ``status_callbacks`` makes the fake report each accepted message's progress
(``sent``, ``delivered`` …) to its ``StatusCallback`` as Twilio does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Protocol

import aiohttp
from aiohttp import web

WHATSAPP_RE = re.compile(r"^whatsapp:\+[1-9]\d{6,14}$")
CONTENT_SID_RE = re.compile(r"^HX[0-9a-fA-F]{32}$")
WINDOW = timedelta(hours=24)


class _Clock(Protocol):
    def now(self) -> datetime: ...


class _WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's webhook signature: HMAC-SHA1 over the URL followed by each sorted name+value, base64."""
    data = url + "".join(k + v for k, v in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _rfc2822(dt: datetime) -> str:
    return format_datetime(dt.astimezone(UTC), usegmt=False).replace("-0000", "+0000")


@dataclass
class Injected:
    status: int
    code: int
    message: str
    retry_after: float | None = None


@dataclass
class CreatedMessage:
    """One message as the fake received and stored it."""

    sid: str
    form: dict[str, list[str]]
    resource: dict[str, Any]
    received_at: datetime
    callbacks: list[dict[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None

    @property
    def to(self) -> str | None:
        return self.get("To")

    @property
    def body(self) -> str | None:
        return self.get("Body")

    @property
    def content_sid(self) -> str | None:
        return self.get("ContentSid")


# the message a create call stored, kept on the request for middlewares (fault injection in tests)
CREATED: web.RequestKey[CreatedMessage] = web.RequestKey("fake_twilio_created", CreatedMessage)


class FakeTwilio:
    def __init__(self, account_sid: str, auth_token: str, *, clock: _Clock | None = None,
                 senders: Iterable[str] = ("whatsapp:+14155238886",), route_prefix: str = "",
                 middlewares: Sequence[Any] = (), status_callbacks: Sequence[str] = (),
                 callback_delay: float = 0.2) -> None:
        """``route_prefix`` (e.g. ``/via/{sender}``) is matched before ``/2010-04-01/…``, so a test can tell the
        callers apart by their ``TWILIO_API_BASE``; ``middlewares`` wrap every request (fault injection).
        ``status_callbacks`` (e.g. ``("sent", "delivered")``) are posted to each accepted message's
        ``StatusCallback``, ``callback_delay`` seconds apart, through ``deliver_callback``."""
        self.account_sid = account_sid
        self.route_prefix = route_prefix
        self.middlewares = tuple(middlewares)
        self.status_callbacks = tuple(status_callbacks)
        self.callback_delay = callback_delay
        # how a callback reaches Loket: (signed URL, params) → None; a test may route it like a load balancer
        self.deliver_callback: Callable[[str, list[tuple[str, str]]], Awaitable[Any]] = self.post_signed
        self.auth_token = auth_token
        self.clock: _Clock = clock or _WallClock()
        self.senders = set(senders)
        self.messages: list[CreatedMessage] = []
        self._by_sid: dict[str, CreatedMessage] = {}
        self.attempts = 0  # every POST to Messages.json, answered or not
        self.attempt_times: list[float] = []  # loop.time() of each of them
        self.rejected: list[dict[str, Any]] = []  # error answers given, with the form that caused them
        self.injected: deque[Injected] = deque()
        self.delay = 0.0
        self.media_delay = 0.0
        self.last_inbound: dict[str, datetime] = {}
        self.media: dict[str, tuple[bytes, str]] = {}
        self.media_fetches: list[str] = []
        self.webhook_responses: list[tuple[int, str]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=self.middlewares)
        prefix = self.route_prefix + "/2010-04-01/Accounts/{account}/Messages"
        app.router.add_post(prefix + ".json", self._create_message)
        app.router.add_get(prefix + "/{message}/Media/{media}", self._get_media)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # noqa: SLF001 - the bound port of port 0
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeTwilio:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ fault injection
    def fail_next(self, n: int, status: int = 503, *, retry_after: float | None = None,
                  code: int | None = None, message: str | None = None) -> None:
        """The next ``n`` create calls answer ``status`` (429 → with ``Retry-After`` when given)."""
        if code is None:
            code = 20429 if status == 429 else 20500
        if message is None:
            message = "Too Many Requests" if status == 429 else "Internal Server Error"
        for _ in range(n):
            self.injected.append(Injected(status, code, message, retry_after))

    def error_response(self, status: int, retry_after: float | None = 1) -> web.Response:
        """Twilio's error answer for ``status`` (429 with a ``Retry-After`` header when given)."""
        if status == 429:
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
            return self._error(429, 20429, "Too Many Requests", headers)
        return self._error(status, 20500, "Internal Server Error" if status == 500 else "Service Unavailable")

    def add_media(self, data: bytes, content_type: str, message_sid: str | None = None) -> str:
        """Hold a media file; returns its URL (Basic auth required, as with Twilio's HTTP auth on media)."""
        message_sid = message_sid or new_sid("MM")
        path = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message_sid}/Media/{new_sid('ME')}"
        self.media[path] = (data, content_type)
        return self.base_url + path

    # ------------------------------------------------------------------ REST API
    def _error(self, status: int, code: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
        body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status}
        return web.json_response(body, status=status, headers=headers)

    def _authorized(self, request: web.Request, account: str) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(password, self.auth_token)
                and account == self.account_sid)

    async def _create_message(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.attempt_times.append(asyncio.get_running_loop().time())
        if self.delay:
            await asyncio.sleep(self.delay)
        account = request.match_info["account"]
        if not self._authorized(request, account):
            return self._error(401, 20003, "Authenticate")
        if request.content_type != "application/x-www-form-urlencoded":
            return self._error(400, 20001, "Content-Type must be application/x-www-form-urlencoded")
        post = await request.post()
        form: dict[str, list[str]] = {}
        for k, v in post.items():
            form.setdefault(k, []).append(str(v))
        if self.injected:
            inj = self.injected.popleft()
            headers = {"Retry-After": str(int(inj.retry_after) if float(inj.retry_after).is_integer()
                                          else inj.retry_after)} if inj.retry_after is not None else None
            self.rejected.append({"status": inj.status, "code": inj.code, "form": form})
            return self._error(inj.status, inj.code, inj.message, headers)

        def one(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        to, from_, body, content_sid = one("To"), one("From"), one("Body"), one("ContentSid")
        problem: tuple[int, str] | None = None
        if not to:
            problem = (21604, "A 'To' phone number is required.")
        elif not WHATSAPP_RE.match(to):
            problem = (21211, f"The 'To' number {to} is not a valid phone number.")
        elif not from_:
            problem = (21603, "A 'From' phone number is required.")
        elif from_ not in self.senders:
            problem = (63007, f"Twilio could not find a Channel with the specified From address: {from_}")
        elif content_sid is not None and not CONTENT_SID_RE.match(content_sid):
            problem = (21655, "The ContentSid is Invalid.")
        elif not (body or content_sid or form.get("MediaUrl")):
            problem = (21602, "Message body is required.")
        elif body is not None and len(body) > 1600:
            problem = (21617, "The concatenated message body exceeds the 1600 character limit.")
        if problem is None and one("ContentVariables") is not None:
            try:
                variables = json.loads(one("ContentVariables") or "")
                if not isinstance(variables, dict):
                    raise ValueError("not an object")
            except ValueError:
                problem = (21656, "The ContentVariables Parameter is invalid.")
        if problem is not None:
            self.rejected.append({"status": 400, "code": problem[0], "form": form})
            return self._error(400, *problem)

        now = self.clock.now()
        sid = new_sid("SM")
        window_failed = False
        if content_sid is None:
            last = self.last_inbound.get(to or "")
            window_failed = last is None or now - last > WINDOW
        resource = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body or "",
            "date_created": _rfc2822(now),
            "date_sent": None,
            "date_updated": _rfc2822(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": None,
            "num_media": str(len(form.get("MediaUrl", []))),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"},
            "to": to,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        created = CreatedMessage(sid=sid, form=form, resource=dict(resource), received_at=now)
        self.messages.append(created)
        self._by_sid[sid] = created
        request[CREATED] = created  # for middlewares: what was accepted
        if not window_failed and self.status_callbacks and one("StatusCallback"):
            self._spawn(self._report(str(one("StatusCallback")), sid))
        if window_failed:
            # Twilio accepts the request and fails the message afterwards.
            created.resource.update(status="failed", error_code=63016,
                                    error_message="Failed to send freeform message because you are outside "
                                    "the allowed window.")
            callback = one("StatusCallback")
            if callback:
                self._spawn(self.deliver_callback(callback, self.status_params(sid, "failed", error_code=63016)))
        return web.json_response(resource, status=201)

    async def _get_media(self, request: web.Request) -> web.Response:
        if not self._authorized(request, request.match_info["account"]):
            return self._error(401, 20003, "Authenticate")
        if self.media_delay:
            await asyncio.sleep(self.media_delay)
        held = self.media.get(request.path)
        if held is None:
            return self._error(404, 20404, f"The requested resource {request.path} was not found")
        self.media_fetches.append(request.path)
        data, ctype = held
        return web.Response(body=data, content_type=ctype.split(";")[0])

    async def _report(self, callback_url: str, sid: str) -> None:
        for status in self.status_callbacks:
            await asyncio.sleep(self.callback_delay)
            await self.deliver_callback(callback_url, self.status_params(sid, status))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ webhooks to Loket
    def sign(self, url: str, params: Iterable[tuple[str, str]]) -> str:
        return twilio_signature(self.auth_token, url, params)

    async def post_signed(self, url: str, params: list[tuple[str, str]], *, signature: str | None = None,
                          sign: bool = True) -> tuple[int, str, str]:
        """POST a form to ``url`` as Twilio does; returns (status, content type, body)."""
        assert self._session is not None
        headers = {"User-Agent": "TwilioProxy/1.1", "Content-Type": "application/x-www-form-urlencoded",
                   "I-Twilio-Idempotency-Token": secrets.token_hex(16)}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        elif sign:
            headers["X-Twilio-Signature"] = self.sign(url, params)
        async with self._session.post(url, data=params, headers=headers) as resp:
            text = await resp.text()
            self.webhook_responses.append((resp.status, text))
            return resp.status, resp.headers.get("Content-Type", ""), text

    def inbound_params(self, from_: str, body: str = "", *, to: str = "whatsapp:+14155238886",
                       message_sid: str | None = None, profile_name: str | None = "Budi",
                       media: Iterable[tuple[str, str]] = (), button_payload: str | None = None,
                       button_text: str | None = None, extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """The form Twilio posts for an incoming WhatsApp message (``media`` = (url, content type) pairs)."""
        sid = message_sid or new_sid("SM")
        media = list(media)
        if media and not sid.startswith("MM"):
            sid = "MM" + sid[2:]
        phone = from_.removeprefix("whatsapp:")
        params: list[tuple[str, str]] = [
            ("SmsMessageSid", sid), ("NumMedia", str(len(media))), ("ProfileName", profile_name or ""),
            ("MessageType", "text" if not media else "image"), ("SmsSid", sid), ("WaId", phone.lstrip("+")),
            ("SmsStatus", "received"), ("Body", body), ("To", to), ("NumSegments", "1"),
            ("ReferralNumMedia", "0"), ("MessageSid", sid), ("AccountSid", self.account_sid),
            ("From", from_), ("ApiVersion", "2010-04-01"),
        ]
        for i, (url, ctype) in enumerate(media):
            params += [(f"MediaUrl{i}", url), (f"MediaContentType{i}", ctype)]
        if button_payload is not None:
            params += [("ButtonPayload", button_payload), ("ButtonText", button_text or button_payload),
                       ("MessageType", "button")]
            params = [p for p in params if p != ("MessageType", "text")]
        if profile_name is None:
            params = [p for p in params if p[0] != "ProfileName"]
        for k, v in (extra or {}).items():
            params = [p for p in params if p[0] != k] + [(k, v)]
        return params

    async def send_inbound(self, webhook_url: str, from_: str, body: str = "", *, signature: str | None = None,
                           sign: bool = True, **kwargs: Any) -> tuple[int, str, str]:
        """Post an inbound WhatsApp message to Loket; remembers it for the 24-hour window."""
        params = self.inbound_params(from_, body, **kwargs)
        result = await self.post_signed(webhook_url, params, signature=signature, sign=sign)
        self.last_inbound[from_] = self.clock.now()
        return result

    async def send_status(self, callback_url: str, message_sid: str, status: str, *,
                          error_code: int | None = None, signature: str | None = None,
                          sign: bool = True) -> tuple[int, str, str]:
        """Post a status callback for ``message_sid`` (queued/sent/delivered/read/failed/undelivered)."""
        params = self.status_params(message_sid, status, error_code=error_code)
        return await self.post_signed(callback_url, params, signature=signature, sign=sign)

    def status_params(self, message_sid: str, status: str, *, error_code: int | None = None) -> list[tuple[str, str]]:
        """The form of a status callback (recorded on the message and moving its ``status``)."""
        created = self._by_sid.get(message_sid)
        params: list[tuple[str, str]] = [
            ("SmsSid", message_sid), ("SmsStatus", status), ("MessageStatus", status),
            ("ChannelToAddress", (created.to or "").removeprefix("whatsapp:") if created else ""),
            ("To", created.to or "" if created else ""), ("ChannelPrefix", "whatsapp"),
            ("MessageSid", message_sid), ("AccountSid", self.account_sid),
            ("From", created.get("From") or "" if created else ""), ("ApiVersion", "2010-04-01"),
        ]
        if error_code is not None:
            params += [("ErrorCode", str(error_code)), ("ChannelStatusMessage", f"error {error_code}")]
        if created is not None:
            created.callbacks.append(dict(params))
            created.resource["status"] = status
        return params

    def sent_to(self, to: str) -> list[CreatedMessage]:
        return [m for m in self.messages if m.to == to]
