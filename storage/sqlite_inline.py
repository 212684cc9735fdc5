"""An aiosqlite-compatible driver shim that runs SQLite calls on the event loop thread.

aiosqlite sends every call (cursor, execute, fetch, close) to a worker thread and back, which costs a
thread switch and a self-pipe wake-up each time: ~4 hops per statement. SQLite statements themselves take
microseconds, so Loket runs them inline and sends to a thread only what can wait: ``BEGIN IMMEDIATE`` when
another process holds the write lock (it is tried inline first, with a zero busy timeout; only if that fails
does it wait, up to ``busy_timeout``, in a thread) and ``COMMIT`` (fsync). SQLAlchemy's own aiosqlite
dialect drives this shim unchanged (``create_async_engine(..., module=dbapi())``).

The shim also keeps the next row id of each table this connection has allocated ids for
(``Connection.next_ids``, used by ``storage/unit_of_work.py``), so a transaction does not read every table's
maximum id again. It stays right because every way a row can get an id is watched: an ``INSERT`` through the
shim forgets its table (the database chose the id), any other statement that may create rows (DDL, ``WITH``)
forgets all, and a commit by another connection or process, which SQLite reports through ``PRAGMA
data_version`` at the next ``BEGIN``, forgets all. A rolled-back transaction leaves ids that are only too
high, which leaves a gap and never a collision.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

_BLOCKING_PREFIXES = ("BEGIN", "COMMIT", "END", "VACUUM", "PRAGMA WAL_CHECKPOINT")


def _is_begin(sql: str) -> bool:
    return sql.lstrip()[:5].upper() == "BEGIN"


def _may_block(sql: str) -> bool:
    return sql.lstrip()[:24].upper().startswith(_BLOCKING_PREFIXES)


# statements that never give a row a new id
_NO_NEW_ROWS = ("SELECT", "UPDATE", "DELETE", "PRAGMA", "BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT",
                "RELEASE")
_INSERT_INTO = re.compile(r'\s*(?:INSERT|REPLACE)\s+(?:OR\s+\w+\s+)?INTO\s+(?:"([^"]+)"|(\w+))\s*[(\s]', re.I)


def _forget_ids(ids: dict[str, int], sql: str) -> None:
    """Drop what a statement may invalidate in a connection's cached next ids."""
    if not ids or sql.lstrip()[:9].upper().startswith(_NO_NEW_ROWS):
        return
    m = _INSERT_INTO.match(sql)
    if m is None:
        ids.clear()  # DDL, WITH … INSERT, anything not recognised: forget every table
    else:
        ids.pop(m.group(1) or m.group(2), None)


class _Requests:
    """Stands in for aiosqlite's request queue, which SQLAlchemy uses to set ``isolation_level``."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller
            future.set_exception(exc)


class Cursor:
    def __init__(self, owner: Connection) -> None:
        assert owner._conn is not None, "the connection is closed"
        self._owner = owner
        self._cursor = owner._conn.cursor()

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = ()) -> Cursor:
        owner = self._owner
        if _is_begin(sql):
            if not self._begin_inline(sql, parameters):
                await owner._threaded(self._cursor.execute, sql, parameters)
            owner.check_data_version()
            return self
        _forget_ids(owner.next_ids, sql)
        if _may_block(sql):
            await owner._threaded(self._cursor.execute, sql, parameters)
        else:
            with owner._lock:
                self._cursor.execute(sql, parameters)
        return self

    def _begin_inline(self, sql: str, parameters: Any) -> bool:
        """Take the write lock without leaving the loop when nobody else holds it (the usual case): BEGIN with
        a zero busy timeout. Only when another process holds the lock does BEGIN wait, in a thread."""
        with self._owner._lock:
            self._cursor.execute("PRAGMA busy_timeout=0")
            try:
                self._cursor.execute(sql, parameters)
                return True
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                return False
            finally:
                self._cursor.execute(f"PRAGMA busy_timeout={self._owner.busy_timeout_ms}")

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        _forget_ids(self._owner.next_ids, sql)
        with self._owner._lock:
            self._cursor.executemany(sql, seq_of_parameters)
        return self

    async def fetchall(self) -> list[Any]:
        with self._owner._lock:
            return self._cursor.fetchall()

    async def fetchone(self) -> Any:
        with self._owner._lock:
            return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        with self._owner._lock:
            return self._cursor.fetchmany(size) if size is not None else self._cursor.fetchmany()

    async def nextset(self) -> None:
        return None

    async def close(self) -> None:
        with self._owner._lock:
            self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class Connection:
    _thread = types.SimpleNamespace(daemon=True)  # SQLAlchemy marks aiosqlite's thread as a daemon

    def __init__(self, database: str, **kwargs: Any) -> None:
        kwargs.pop("iter_chunk_size", None)
        kwargs.pop("loop", None)
        kwargs["check_same_thread"] = False  # BEGIN/COMMIT run in a worker thread, one at a time
        self._database = database
        self._kwargs = kwargs
        self.busy_timeout_ms = int(float(kwargs.get("timeout", 5.0)) * 1000)
        self._conn: sqlite3.Connection | None = None
        self._tx = _Requests()
        # One user of the sqlite3 connection at a time: a thread still committing after its awaiting task was
        # cancelled must finish before the loop thread rolls back or closes the same connection.
        self._lock = threading.Lock()
        self.next_ids: dict[str, int] = {}  # table name → the next id this connection may hand out
        self._data_version: int | None = None

    async def _threaded(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(*args)

        return await asyncio.to_thread(locked)

    def check_data_version(self) -> None:
        """At BEGIN (the write lock held): if another connection committed since, the cached ids may be taken."""
        assert self._conn is not None
        with self._lock:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self.next_ids.clear()
            self._data_version = version

    def __await__(self) -> Any:
        async def _open() -> Connection:
            self._conn = await asyncio.to_thread(lambda: sqlite3.connect(self._database, **self._kwargs))
            return self

        return _open().__await__()

    @property
    def _connection(self) -> sqlite3.Connection | None:
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        assert self._conn is not None
        return self._conn.isolation_level

    def cursor(self) -> Cursor:
        with self._lock:
            return Cursor(self)

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> Cursor:
        cur = Cursor(self)
        return await cur.execute(sql, parameters)

    async def commit(self) -> None:
        assert self._conn is not None
        await self._threaded(self._conn.commit)

    async def rollback(self) -> None:
        assert self._conn is not None
        with self._lock:
            self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        assert self._conn is not None
        with self._lock:
            self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def connect(database: str, **kwargs: Any) -> Connection:
    return Connection(database, **kwargs)


def dbapi() -> Any:
    """The module object SQLAlchemy's aiosqlite dialect expects, backed by this shim."""
    from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi

    module = types.ModuleType("loket_sqlite_inline")
    module.connect = connect  # type: ignore[attr-defined]
    module.Connection = Connection  # type: ignore[attr-defined]
    for name in ("DatabaseError", "Error", "IntegrityError", "NotSupportedError", "OperationalError",
                 "ProgrammingError", "sqlite_version", "sqlite_version_info", "Warning", "InterfaceError",
                 "InternalError", "DataError"):
        setattr(module, name, getattr(sqlite3, name))
    return AsyncAdapt_aiosqlite_dbapi(module, sqlite3)
