"""Scoped API tokens (hashed at rest) and the ``require_scope`` decorator every ``/api/v1`` handler uses.

A token looks like ``lkt_<prefix>_<secret>``. The database keeps the public ``prefix`` (to find the row) and
``sha256(secret)`` only; the secret is shown once, when the token is created. ``admin`` grants every scope.

Bad tokens are throttled per client IP: after ``LOKET_API_MAX_FAILURES`` (default 10) failed attempts within
``LOKET_API_FAILURE_WINDOW`` seconds (default 60) that IP gets 429 until the window passes. The counters live in
Redis when ``REDIS_URL`` is set (shared by every web process), else in the process.

Other features protect their routes the same way::

    from bot.api.auth import require_scope

    @require_scope("appointments:write")
    async def handler(request): ...   # request[PRINCIPAL] is the token's Principal
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.api.models import api_tokens
from bot.clock import aware

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("loket.api")

SCOPES: dict[str, str] = {
    "conversations:read": "List and read conversations.",
    "conversations:write": "Change a conversation's state, assignee, priority or labels.",
    "messages:read": "Read the messages of conversations.",
    "messages:write": "Send messages as an agent or as the bot.",
    "customers:read": "Read customers and their timelines.",
    "customers:write": "Change customer records.",
    "articles:read": "Read knowledge base articles.",
    "appointments:read": "Read appointments.",
    "appointments:write": "Create, move and cancel appointments.",
    "agents:read": "List agents and teams.",
    "webhooks:read": "Read outgoing webhook subscriptions and their delivery log.",
    "webhooks:write": "Create, change and delete outgoing webhook subscriptions.",
    "admin": "Everything, including API tokens.",
}
TOKEN_PREFIX = "lkt"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InvalidScope(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        return f"api:{self.name}#{self.token_id}"

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("loket.api_principal", Principal)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The one error shape of the API: ``{"error": {"code": …, "message": …}}``."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_scopes(scopes: list[str]) -> list[str]:
    clean = sorted({s.strip() for s in scopes if s.strip()})
    unknown = [s for s in clean if s not in SCOPES]
    if unknown:
        raise InvalidScope(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not clean:
        raise InvalidScope(f"give at least one scope; known: {', '.join(SCOPES)}")
    return clean


async def create_token(conn: AsyncConnection, name: str, scopes: list[str], now: Any,
                       created_by: str | None = None) -> tuple[int, str]:
    """Store a new token; returns (id, plain token). The plain token is never stored."""
    clean = validate_scopes(scopes)
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = await conn.execute(
        api_tokens.insert().returning(api_tokens.c.id),
        {"name": name, "prefix": prefix, "secret_hash": hash_secret(secret), "scopes": clean,
         "created_by": created_by, "created_at": now, "last_used_at": None, "revoked_at": None},
    )
    return int(row.scalar_one()), f"{TOKEN_PREFIX}_{prefix}_{secret}"


async def revoke_token(conn: AsyncConnection, token_id: int, now: Any) -> bool:
    res = await conn.execute(
        update(api_tokens).where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    return (res.rowcount or 0) > 0


def _split(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class Throttle:
    """Failed-token counter per client IP (Redis when available, else per process)."""

    def __init__(self, rt: Runtime) -> None:
        env = rt.settings.env
        self.rt = rt
        self.max_failures = int(env.get("LOKET_API_MAX_FAILURES", "10"))
        self.window = int(env.get("LOKET_API_FAILURE_WINDOW", "60"))
        self.prefix = env.get("LOKET_REDIS_PREFIX", "") + "loket:apifail:"
        self._local: dict[str, tuple[float, int]] = {}

    def _redis(self) -> Any:
        return getattr(self.rt.events, "_redis", None)

    async def blocked(self, ip: str) -> bool:
        redis = self._redis()
        if redis is not None:
            try:
                value = await redis.get(self.prefix + ip)
                return value is not None and int(value) >= self.max_failures
            except Exception:  # noqa: BLE001 - fall back to the local counter
                log.warning("Redis unavailable for API throttling; using the local counter")
        started, count = self._local.get(ip, (0.0, 0))
        return time.monotonic() - started < self.window and count >= self.max_failures

    async def fail(self, ip: str) -> bool:
        """Count a failed attempt (atomically); True when it is over the limit. Guesses that arrive together all
        pass ``blocked`` before any of them is counted, so the answer to each is decided here: past the limit it
        is 429 like every later attempt (the 256-bit secret makes the few extra look-ups worthless)."""
        redis = self._redis()
        if redis is not None:
            try:
                key = self.prefix + ip
                count = int(await redis.incr(key))
                if count == 1:
                    await redis.expire(key, self.window)
                return count > self.max_failures
            except Exception:  # noqa: BLE001
                pass
        now = time.monotonic()
        started, count = self._local.get(ip, (now, 0))
        if now - started >= self.window:
            started, count = now, 0
        self._local[ip] = (started, count + 1)
        if len(self._local) > 10_000:  # bound memory under a spray of addresses
            for key in list(self._local)[:5_000]:
                self._local.pop(key, None)
        return count + 1 > self.max_failures

    def too_many(self) -> web.Response:
        return error(429, "too_many_failures",
                     f"too many failed API token attempts from this address; wait {self.window} s",
                     headers={"Retry-After": str(self.window)})


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


class TokenAuth:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.throttle = Throttle(rt)

    async def principal(self, request: web.Request) -> Principal | web.Response:
        """The request's principal, or the error response to send (401 / 429)."""
        ip = client_ip(request)
        if await self.throttle.blocked(ip):
            return self.throttle.too_many()
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return error(401, "unauthorized", "send an API token: 'Authorization: Bearer lkt_…' "
                                              "(create one with `loket tokens create`)")
        parts = _split(header[7:].strip())
        row = None
        if parts is not None:
            async with self.rt.engine.connect() as conn:
                row = (await conn.execute(select(api_tokens).where(api_tokens.c.prefix == parts[0]))).mappings().first()
        if (row is None or parts is None or row["revoked_at"] is not None
                or not hmac.compare_digest(row["secret_hash"], hash_secret(parts[1]))):
            if await self.throttle.fail(ip):
                return self.throttle.too_many()
            return error(401, "invalid_token", "the API token is unknown, revoked or malformed")
        now = self.rt.clock.now()
        last = aware(row["last_used_at"])
        if last is None or now - last > timedelta(minutes=1):
            try:
                async with self.rt.engine.begin() as conn:
                    await conn.execute(update(api_tokens).where(api_tokens.c.id == row["id"]).values(last_used_at=now))
            except Exception:  # noqa: BLE001 - bookkeeping only
                log.warning("could not record API token use", exc_info=True)
        return Principal(int(row["id"]), row["name"], frozenset(row["scopes"] or []))

    async def check(self, request: web.Request, scope: str) -> Principal | web.Response:
        result = await self.principal(request)
        if isinstance(result, web.Response):
            return result
        if not result.allows(scope):
            return error(403, "forbidden", f"this token lacks the scope {scope!r}")
        request[PRINCIPAL] = result
        return result


def token_auth(rt: Runtime) -> TokenAuth:
    auth = rt.services.get("api_token_auth")
    if auth is None:
        auth = TokenAuth(rt)
        rt.services["api_token_auth"] = auth

        async def api_auth(request: web.Request, scope: str) -> Principal | None:
            result = await auth.check(request, scope)
            return None if isinstance(result, web.Response) else result

        rt.services["api_auth"] = api_auth
    return auth  # type: ignore[no-any-return]


def require_scope(scope: str) -> Callable[[Handler], Handler]:
    """Decorate an aiohttp handler: 401 without a valid token, 403 without ``scope``, 429 when throttled."""
    if scope not in SCOPES:
        raise InvalidScope(f"unknown scope {scope!r}")

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            from bot.runtime import get_runtime

            result = await token_auth(get_runtime(request)).check(request, scope)
            if isinstance(result, web.Response):
                return result
            return await handler(request)

        guarded.required_scope = scope  # type: ignore[attr-defined]
        return guarded

    return wrap
