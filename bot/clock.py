"""Time source. Everything that asks "what time is it" goes through a Clock so tests can move time."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta


class Clock:
    """Wall clock in UTC, with an optional offset (``LOKET_CLOCK_OFFSET_SECONDS``) for tests and demos."""

    def __init__(self, offset: timedelta | None = None) -> None:
        if offset is None:
            offset = timedelta(seconds=float(os.environ.get("LOKET_CLOCK_OFFSET_SECONDS", "0") or 0))
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


class FrozenClock(Clock):
    """A clock that only moves when told to (tests)."""

    def __init__(self, at: datetime) -> None:
        super().__init__(timedelta(0))
        self._at = at if at.tzinfo else at.replace(tzinfo=UTC)

    def now(self) -> datetime:
        return self._at + self.offset


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; everything we store is UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
