"""The async engine: SQLite (WAL, one writer connection) by default, PostgreSQL via asyncpg."""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import ARRAY, Boolean, Integer, String, any_, bindparam, event, literal_column
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal


class DatabaseUnavailable(Exception):
    """The database cannot be reached or opened; the message says what to fix."""


def json_dumps(value: Any) -> str:
    """JSON columns are written with orjson (several times faster than the json module on the hot path)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    kwargs.setdefault("json_serializer", json_dumps)
    kwargs.setdefault("json_deserializer", orjson.loads)
    if url.startswith("sqlite"):
        from storage.sqlite_inline import dbapi

        engine = create_async_engine(
            url,
            module=dbapi(),
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            connect_args={"timeout": 30, "check_same_thread": False},
            **kwargs,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Manage transactions ourselves so every write transaction starts IMMEDIATE (no lock upgrades).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # LIFO: the busy paths keep reusing the same few connections (their prepared statements stay warm), the
    # rest sit idle; 256 prepared statements per connection hold every shape of the message path.
    kwargs.setdefault("connect_args", {}).setdefault("prepared_statement_cache_size", 256)
    engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_use_lifo=True, **kwargs)
    _ping_after_idle(engine)
    return engine


# A pooled connection used less than this long ago is not pinged at checkout (its socket is checked instead).
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_after_idle(engine: AsyncEngine) -> None:
    """Pre-ping pooled connections that sat idle, not every checkout.

    SQLAlchemy's ``pool_pre_ping`` costs three round trips per checkout with asyncpg (BEGIN, a ping, ROLLBACK):
    three more for a storing batch's six, and for the dispatcher's three. A connection checked in under a second ago is
    only checked locally (asyncpg sees a closed socket, e.g. a terminated backend, at once); an older one is
    pinged as before. A failed ping makes the pool replace the connection (``DisconnectionError``); a
    connection that dies between a check and its first statement fails that statement, as any could.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        last = record.info.pop("checked_in_at", None)
        if last is None:  # opened for this checkout
            return
        if dbapi_conn.driver_connection.is_closed():  # e.g. its backend was terminated while it was pooled
            raise DisconnectionError("the pooled connection was closed by the server")
        if time.monotonic() - last < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_conn.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means: use another connection
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


class OneOf(ColumnElement[bool]):
    """``column IN (:name)`` for a list parameter ``name``, written once and rendered per dialect (``one_of``)."""

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a comparison: no ``= 1`` around it where booleans are integers (SQLite)
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement), ("name", InternalTraversal.dp_string)]

    def __init__(self, column: Any, name: str) -> None:
        self.column = column
        self.name = name


@compiles(OneOf, "postgresql")
def _one_of_postgresql(element: OneOf, compiler: Any, **kw: Any) -> str:
    # one array parameter: an expanding IN renders one placeholder per value, so every list length was another
    # statement to prepare (the driver keeps a few hundred per connection: on the message path, one statement in
    # five was prepared again, an extra round trip and a plan each time)
    return str(compiler.process(element.column == any_(bindparam(element.name, type_=ARRAY(element.column.type))),
                                **kw))


@compiles(OneOf)
def _one_of_default(element: OneOf, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw))


class utc_hour(FunctionElement[int]):  # noqa: N801 - used like a SQL function
    """The hour of day (0-23, UTC) of a timestamp column, rendered per dialect: for counts per hour in SQL."""

    type = Integer()
    inherit_cache = True
    name = "utc_hour"


@compiles(utc_hour, "postgresql")
def _utc_hour_postgresql(element: utc_hour, compiler: Any, **kw: Any) -> str:
    # timestamptz: the hour in UTC whatever the session's TimeZone
    return f"CAST(EXTRACT(HOUR FROM timezone('UTC', {compiler.process(element.clauses, **kw)})) AS INTEGER)"


@compiles(utc_hour)
def _utc_hour_default(element: utc_hour, compiler: Any, **kw: Any) -> str:
    # SQLite: SQLAlchemy stores a DateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC
    return f"CAST(strftime('%H', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


def constant(value: str) -> ColumnElement[str]:
    """A string written into the statement's text rather than bound as a parameter: a status a query filters on.
    From it PostgreSQL can tell, also in a prepared statement's generic plan, that the rows wanted are in a partial
    index on that status (with a parameter it cannot, and may walk the primary key instead)."""
    if not value.replace("_", "").isalnum():
        raise ValueError(f"not a plain word: {value!r}")
    return literal_column(f"'{value}'", String)


def one_of(column: Any, name: str) -> OneOf:
    """``column IN (:name)`` for a list parameter ``name``: ``column = ANY(:name)`` with one array parameter on
    PostgreSQL, an expanding IN elsewhere. One statement serves both databases."""
    return OneOf(column, name)


def is_sqlite(engine: AsyncEngine | AsyncConnection) -> bool:
    return engine.dialect.name == "sqlite"


def insert_ignore(conn: AsyncConnection, table: Any) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` for either dialect."""
    ins = sqlite_insert(table) if is_sqlite(conn) else pg_insert(table)
    return ins.on_conflict_do_nothing()


async def check_database(engine: AsyncEngine) -> None:
    """Connect once, turning driver errors into one readable line."""
    from sqlalchemy import text

    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any driver error means "cannot use this database"
        url = engine.url.render_as_string(hide_password=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot open the database at {url}: {reason}. "
            "Check DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/loket or sqlite:///loket.db) "
            "and that the server is running."
        ) from exc
