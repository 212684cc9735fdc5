"""Console authentication: argon2 passwords, hashed server-side sessions, CSRF, login throttling, TOTP."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_console.models import console_sessions, login_attempts
from storage.models import agents, audit_log

ROLES = {"agent": 1, "supervisor": 2, "admin": 3}
SESSION_TTL = timedelta(hours=12)
MAX_FAILURES_ACCOUNT = 5
MAX_FAILURES_IP = 20
LOCK_WINDOW = timedelta(minutes=15)
_hasher = PasswordHasher()
_DUMMY = _hasher.hash("not-a-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def role_at_least(role: str, needed: str) -> bool:
    return ROLES.get(role, 0) >= ROLES[needed]


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def verify_totp(secret: str, code: str, now: datetime) -> bool:
    return pyotp.TOTP(secret).verify(code.strip(), for_time=now, valid_window=1)


async def throttled(conn: AsyncConnection, email: str, ip: str, now: datetime) -> bool:
    """Locked when the account or the address has too many failures inside the window.

    Call it first in the login's transaction: it serializes attempts on the same account and from the same
    address until that transaction ends, so guesses sent all at once are counted one after the other (on
    PostgreSQL with transaction-scoped advisory locks; SQLite already runs one write transaction at a time)."""
    if conn.dialect.name == "postgresql":
        for key in (f"loket:login:account:{email}", f"loket:login:ip:{ip}"):  # always this order: no deadlock
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key})
    since = now - LOCK_WINDOW
    by_account = (await conn.execute(select(func.count()).select_from(login_attempts).where(
        login_attempts.c.email == email, login_attempts.c.success.is_(False),
        login_attempts.c.created_at >= since))).scalar_one()
    by_ip = (await conn.execute(select(func.count()).select_from(login_attempts).where(
        login_attempts.c.ip == ip, login_attempts.c.success.is_(False),
        login_attempts.c.created_at >= since))).scalar_one()
    return by_account >= MAX_FAILURES_ACCOUNT or by_ip >= MAX_FAILURES_IP


async def record_attempt(conn: AsyncConnection, email: str, ip: str, success: bool, now: datetime) -> None:
    await conn.execute(insert(login_attempts).values(email=email, ip=ip, success=success, created_at=now))
    if success:  # a good login clears the account's failures
        await conn.execute(delete(login_attempts).where(
            and_(login_attempts.c.email == email, login_attempts.c.success.is_(False))))


async def create_session(conn: AsyncConnection, agent_id: int, ip: str, ua: str, now: datetime) -> tuple[str, str]:
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    await conn.execute(insert(console_sessions).values(
        token_hash=token_hash(token), agent_id=agent_id, csrf_token=csrf, ip=ip, user_agent=ua[:300],
        created_at=now, last_seen_at=now, expires_at=now + SESSION_TTL))
    return token, csrf


async def load_session(conn: AsyncConnection, token: str | None, now: datetime) -> dict[str, Any] | None:
    if not token:
        return None
    row = (await conn.execute(
        select(console_sessions, agents.c.email, agents.c.name, agents.c.role, agents.c.language,
               agents.c.active, agents.c.max_chats, agents.c.presence)
        .join(agents, agents.c.id == console_sessions.c.agent_id)
        .where(console_sessions.c.token_hash == token_hash(token)))).mappings().first()
    if row is None or not row["active"]:
        return None
    exp = row["expires_at"]
    if exp.tzinfo is None:
        from datetime import UTC
        exp = exp.replace(tzinfo=UTC)
    if exp <= now:
        return None
    return dict(row)


async def end_session(conn: AsyncConnection, token: str) -> None:
    await conn.execute(delete(console_sessions).where(console_sessions.c.token_hash == token_hash(token)))


async def audit(conn: AsyncConnection, actor: str, action: str, now: datetime, *, object_type: str | None = None,
                object_id: Any = None, before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
                ip: str | None = None) -> None:
    await conn.execute(insert(audit_log).values(
        actor=actor, action=action, object_type=object_type, object_id=None if object_id is None else str(object_id),
        before=before, after=after, ip=ip, created_at=now))


def combined_presence(pages: Iterable[str]) -> str:
    """An agent's presence from what each open console page reports: online if any page is in front, away if
    all are in the background, offline with none open."""
    states = set(pages)
    return "online" if "online" in states else "away" if states else "offline"


async def touch_presence(conn: AsyncConnection, agent_id: int, presence: str, now: datetime) -> None:
    await conn.execute(update(agents).where(agents.c.id == agent_id).values(presence=presence, presence_at=now))
