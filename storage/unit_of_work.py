"""Unit of work: the writes of one transaction, collected and sent as one statement per table and shape.

Routing a batch of messages writes the same few kinds of rows for every message (the inbound and outbound
messages, outbox rows, touchpoints, conversation and customer updates). Sent one by one that is ~10
statements per message, and the statements, not the database, were the cost. Inside ``unit_of_work(conn)``
the hot-path writers (``insert``, ``update``, ``add_touchpoint``) only record rows; the rows go out when the
block ends: on SQLite as one ``executemany`` per table and shape in table order (foreign keys first), on
PostgreSQL as one statement for the whole flush (``_pg_plan``: one round trip instead of one per table).

Nothing changes for code that reads: **any other statement on the connection flushes the pending writes
first** (an ``before_execute`` hook, like an ORM's autoflush), so a read inside the transaction always sees
what was written before it. Rows that need their id at once (a message whose id goes into its outbox row and
touchpoints) get it from ``next_id``: a block of sequence values on PostgreSQL; on SQLite, which has one
writer holding the write lock for the whole transaction, the next rowid after the table's current maximum.

A unit of work can be nested inside a savepoint (``async with conn.begin_nested(), unit_of_work(conn)``):
the outer writes are flushed first, and if the savepoint rolls back its own writes are dropped with it.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, nullcontext
from contextvars import ContextVar
from functools import cache
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Table,
    Text,
    event,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select, TextClause
from sqlalchemy.sql.util import find_tables

from storage.db import is_sqlite

UOW_KEY = "loket.unit_of_work"
WRITE_ONLY_KEY = "loket.write_only"
# The innermost open unit of work of this task (checked against the connection it belongs to): reading a
# context variable is much cheaper than ``AsyncConnection.info``, and the writers ask on every row.
_innermost: ContextVar[UnitOfWork | None] = ContextVar("loket_unit_of_work", default=None)
_PG_ID_BLOCK = 256  # most ids one sequence round trip hands out

_table_order: dict[Table, int] = {}
_pg_sequences: dict[str, str] = {}
_PLAIN_TYPES = (Integer, String, Text, Boolean, Float)


def _order(table: Table) -> int:
    if table not in _table_order:
        for i, t in enumerate(table.metadata.sorted_tables):
            _table_order[t] = i
    return _table_order.get(table, 10_000)


_last_datetime: list[Any] = [None, None]  # most rows of a batch carry the same timestamp


def _sqlite_datetime(value: Any) -> Any:
    # SQLAlchemy's storage format for DateTime on SQLite (the offset is not stored; readers assume UTC)
    if value is None:
        return None
    if value is _last_datetime[0]:
        return _last_datetime[1]
    text = (f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}:"
            f"{value.second:02d}.{value.microsecond:06d}")
    _last_datetime[0], _last_datetime[1] = value, text
    return text


def _sqlite_shim(conn: Connection) -> Any:
    """Loket's inline SQLite driver connection (``storage/sqlite_inline.py``) under ``conn``, or None."""
    shim = getattr(conn.connection.dbapi_connection, "_connection", None)
    return shim if isinstance(getattr(shim, "_conn", None), sqlite3.Connection) else None


def _sqlite_driver(conn: Connection) -> tuple[Any, Any] | None:
    """The sqlite3 connection under Loket's inline driver and its lock."""
    shim = _sqlite_shim(conn)
    return (shim._conn, shim._lock) if shim is not None else None


def _row_order(kind: str, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The order of a step's values in a row: its columns, and for an update the id last (``WHERE id = ...``)."""
    return columns if kind == "insert" else (*columns, "id")


@cache
def _converter(table: Table, column: str, dialect: str) -> Any:
    """How a Python value of this column goes to the driver, as SQLAlchemy would send it."""
    from storage.db import json_dumps

    ctype = table.c[column].type
    if isinstance(ctype, JSON):
        return json_dumps  # None is stored as JSON null, as SQLAlchemy does
    if isinstance(ctype, DateTime):
        return _sqlite_datetime if dialect == "sqlite" else None
    if isinstance(ctype, _PLAIN_TYPES):
        return None
    raise TypeError(f"no driver conversion for {table.name}.{column} ({ctype!r})")


@cache
def _sqlite_plan(table: Table, kind: str, columns: tuple[str, ...]) -> tuple[str, Any]:
    """SQLite: (driver SQL, row → parameter tuple) for an INSERT of ``columns`` or an UPDATE of them by id.

    The unit of work sends its batches through the driver directly (``exec_driver_sql``): compiling
    parameters through SQLAlchemy's per-row bind processing cost more than the database's own work.
    """
    quoted = [f'"{c}"' for c in columns]
    if kind == "insert":
        sql = f'INSERT INTO "{table.name}" ({", ".join(quoted)}) VALUES ({", ".join("?" for _ in columns)})'
    else:
        sql = f'UPDATE "{table.name}" SET {", ".join(f"{q} = ?" for q in quoted)} WHERE "id" = ?'
    order = _row_order(kind, columns)
    convs = [(c, _converter(table, c, "sqlite")) for c in order]
    if all(f is None for _, f in convs):
        def convert(row: dict[str, Any]) -> tuple[Any, ...]:
            return tuple([row[c] for c in order])
    else:
        def convert(row: dict[str, Any]) -> tuple[Any, ...]:
            return tuple([row[c] if f is None else f(row[c]) for c, f in convs])
    return sql, convert


# A flush's shape: each step's table, kind (insert or update) and columns
Steps = tuple[tuple[Table, str, tuple[str, ...]], ...]
_pg_plans: dict[tuple[Steps, tuple[tuple[int, ...], ...]], str] = {}
# Statements per flush shape with different constant columns, at most; then that shape's flushes send arrays
# only. Each statement is prepared on each pooled connection, whose cache of prepared statements is bounded.
_PG_VARIANTS = 8
_pg_variants: dict[Steps, int] = {}


def _pg_type(table: Table, column: str) -> str:
    return str(table.c[column].type.compile(dialect=postgresql.dialect()))


def _pg_plan(steps: Steps, constant: tuple[tuple[int, ...], ...]) -> str:
    """PostgreSQL: every insert and update of a flush as one statement (one round trip). Each step is a
    data-modifying ``WITH`` part fed by ``unnest`` of one array per column; a column whose rows all hold the same
    value (``constant[i]``: its positions in ``_row_order``) is one scalar parameter instead. The text
    depends on the shape and on which columns are constant, never on the number of rows: one prepared statement
    for each, and there are few, because the same columns are constant batch after batch (the batch's timestamp,
    the channel, a reply's empty columns). They hold ~40 % of a flush's values; as arrays, each value cost the
    driver an encoding and the database a decoding. Foreign keys are checked at the end of the statement, so the
    parts' order is free.
    """
    key = (steps, constant)
    sql = _pg_plans.get(key)
    if sql is not None:
        return sql
    parts: list[str] = []
    n = 0
    for i, ((table, kind, cols), fixed) in enumerate(zip(steps, constant, strict=True)):
        order = _row_order(kind, cols)
        values: list[str] = []  # each column's value in a row of the step: a scalar or the unnest's column
        arrays: list[str] = []
        names: list[str] = []
        for j, c in enumerate(order):
            n += 1
            if j in fixed:
                values.append(f"${n}::{_pg_type(table, c)}")
            else:
                arrays.append(f"${n}::{_pg_type(table, c)}[]")
                names.append(f'"{c}"')
                values.append(f'v."{c}"')
        unnest = f"unnest({', '.join(arrays)}) AS v({', '.join(names)})"
        if kind == "insert":
            quoted = ", ".join(f'"{c}"' for c in order)
            parts.append(f'w{i} AS (INSERT INTO "{table.name}" ({quoted}) SELECT {", ".join(values)} FROM {unnest})')
        else:
            sets = ", ".join(f'"{c}" = {v}' for c, v in zip(order[:-1], values, strict=False))
            parts.append(f'w{i} AS (UPDATE "{table.name}" SET {sets} FROM {unnest} WHERE "{table.name}"."id" = '
                         f'{values[-1]})')
    sql = _pg_plans[key] = f"WITH {', '.join(parts)} SELECT 1"
    _pg_variants[steps] = _pg_variants.get(steps, 0) + 1
    return sql


def _pg_columns(table: Table, kind: str, cols: tuple[str, ...], rows: list[dict[str, Any]]) -> list[list[Any]]:
    """A step's rows as one list per column, in ``_row_order``, as the driver takes them."""
    columns: list[list[Any]] = []
    for c in _row_order(kind, cols):
        convert = _converter(table, c, "postgresql")
        column = [r[c] for r in rows]
        columns.append(column if convert is None else list(map(convert, column)))
    return columns


def _constant_columns(columns: list[list[Any]]) -> tuple[int, ...]:
    """The positions of a step's columns that hold one value in every row. One row stays arrays (its shape is the
    many-row shape's, with nothing to save), and one column always does: ``unnest`` gives the step its rows."""
    if len(columns[0]) < 2:
        return ()
    fixed = tuple(j for j, col in enumerate(columns) if col.count(col[0]) == len(col))
    return fixed[:-1] if len(fixed) == len(columns) else fixed


def _runs(rows: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive rows with the same columns in the same order (one executemany each; row order is kept)."""
    runs: list[list[dict[str, Any]]] = []
    shape: tuple[str, ...] | None = None
    for row in rows:
        s = tuple(row)
        if s != shape:
            runs.append([])
            shape = s
        runs[-1].append(row)
    return runs


class UnitOfWork:
    def __init__(self, dialect: str, conn: AsyncConnection | None = None) -> None:
        self.dialect = dialect
        self.conn = conn
        self.open = True
        self.inserts: dict[Table, list[dict[str, Any]]] = {}
        self.inserted: dict[tuple[Table, int], dict[str, Any]] = {}  # pending rows by id: updates merge in
        self.updates: dict[tuple[Table, int], dict[str, Any]] = {}
        self.flushing = False
        self.parent: UnitOfWork | None = None
        self.other_writes = 0  # statements that wrote outside this unit of work (rows read before may be stale)
        # id allocation: PostgreSQL sequence values fetched in blocks; SQLite next rowid per table
        self._ids: dict[Table, list[int]] = {}
        self._sqlite_next: dict[str, int] | None = None  # table name → next id (see _sqlite_id_cache)
        self._shared_ids = False  # _sqlite_next is the driver connection's (it watches every statement)
        self.expect: dict[Table, int] = {}  # how many ids of a table this transaction will likely need

    # ------------------------------------------------------------------ recording
    @property
    def pending(self) -> bool:
        return bool(self.inserts or self.updates)

    def insert(self, table: Table, row: dict[str, Any]) -> None:
        self.inserts.setdefault(table, []).append(row)
        pk = row.get("id")
        if pk is not None:
            self.inserted[(table, pk)] = row

    def update(self, table: Table, pk: int, values: dict[str, Any]) -> None:
        row = self.inserted.get((table, pk))
        if row is not None:
            row.update(values)
            return
        self.updates.setdefault((table, pk), {}).update(values)

    # ------------------------------------------------------------------ ids
    def _root(self) -> UnitOfWork:
        uow = self
        while uow.parent is not None:
            uow = uow.parent
        return uow

    async def next_id(self, conn: AsyncConnection, table: Table) -> int:
        root = self._root()  # one allocator per transaction, shared by nested units
        if root.dialect == "sqlite":
            ids = root._sqlite_id_cache(conn.sync_connection)  # type: ignore[arg-type]
            nxt = ids.get(table.name)
            if nxt is None:  # (the read flushes what is pending first, so the maximum includes it)
                current = (await conn.execute(select(table.c.id).order_by(table.c.id.desc()).limit(1))).scalar()
                nxt = int(current or 0) + 1
            ids[table.name] = nxt + 1
            return nxt
        block = root._ids.get(table)
        if not block:
            # one round trip for this table and every other table this transaction said it will need
            wanted = {table: root.expect.pop(table, 1)}
            for other in [t for t, n in root.expect.items() if n > 0 and not root._ids.get(t)]:
                wanted[other] = root.expect.pop(other)
            await root._fetch_ids(conn, wanted)
            block = root._ids[table]
        return block.pop()

    def _sqlite_id_cache(self, conn: Connection) -> dict[str, int]:
        """Table name → next id: the driver connection's cache, which outlives transactions and forgets what
        other statements and connections may have taken; under another driver, this transaction's own."""
        root = self._root()
        if root._sqlite_next is None:
            shim = _sqlite_shim(conn)
            root._shared_ids = shim is not None
            root._sqlite_next = shim.next_ids if shim is not None else {}
        return root._sqlite_next

    def provide_ids(self, table: Table, ids: list[int]) -> None:
        """Sequence values of ``table`` another statement of this transaction already fetched (PostgreSQL)."""
        root = self._root()
        root._ids[table] = sorted([*ids, *root._ids.get(table, [])], reverse=True)  # handed out ascending

    async def _fetch_ids(self, conn: AsyncConnection, wanted: dict[Table, int]) -> None:
        """Blocks of sequence values for several tables in one statement (PostgreSQL)."""
        parts: list[str] = []
        params: dict[str, Any] = {}
        tables = list(wanted)
        for i, table in enumerate(tables):
            seq = _pg_sequences.get(table.name)
            if seq is None:
                seq = (await conn.execute(
                    text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table.name}
                )).scalar_one()
                _pg_sequences[table.name] = seq
            parts.append(f"SELECT {i} AS t, nextval(CAST(:s{i} AS regclass)) FROM generate_series(1, :n{i})")
            params[f"s{i}"], params[f"n{i}"] = seq, max(1, min(_PG_ID_BLOCK, wanted[table]))
        blocks: dict[int, list[int]] = {i: [] for i in range(len(tables))}
        for t, value in (await conn.execute(text(" UNION ALL ".join(parts)), params)).all():
            blocks[t].append(value)
        for i, table in enumerate(tables):
            blocks[i].sort(reverse=True)  # handed out in ascending order by pop()
            self._ids[table] = blocks[i]

    def forget_sqlite_ids(self) -> None:
        """Another statement may have inserted rows: read the maxima again before handing out ids (only
        without Loket's SQLite driver, which watches every statement itself)."""
        root = self._root()
        if root._sqlite_next is not None and not root._shared_ids:
            root._sqlite_next.clear()

    # ------------------------------------------------------------------ flushing
    def flush_sync(self, conn: Connection) -> None:
        if not self.pending or self.flushing:
            return
        self.flushing = True
        try:
            inserts, updates = self.inserts, self.updates
            self.inserts, self.updates, self.inserted = {}, {}, {}
            steps: list[tuple[Table, str, tuple[str, ...], list[dict[str, Any]]]] = []
            for table in sorted(inserts, key=_order):
                for run in _runs(inserts[table]):
                    steps.append((table, "insert", tuple(run[0]), run))
            grouped: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = {}
            # primary-key order: two transactions updating the same rows take their locks in the same order (on
            # PostgreSQL the arrays are in this order; the row locks then follow the plan of the join over unnest)
            for (table, pk), values in sorted(updates.items(), key=lambda kv: (_order(kv[0][0]), kv[0][1])):
                grouped.setdefault((table, tuple(sorted(values))), []).append({**values, "id": pk})
            steps.extend((table, "update", cols, rows) for (table, cols), rows in grouped.items())
            if self.dialect == "sqlite":
                self._flush_sqlite(conn, steps)
            elif steps:
                shape = tuple((table, kind, cols) for table, kind, cols, _ in steps)
                columns = [_pg_columns(table, kind, cols, rows) for table, kind, cols, rows in steps]
                constant = tuple(_constant_columns(c) for c in columns)
                if (shape, constant) not in _pg_plans and _pg_variants.get(shape, 0) >= _PG_VARIANTS:
                    constant = tuple(() for _ in steps)
                params = [col[0] if j in fixed else col
                          for cols, fixed in zip(columns, constant, strict=True) for j, col in enumerate(cols)]
                conn.exec_driver_sql(_pg_plan(shape, constant), tuple(params))
        finally:
            self.flushing = False

    def _flush_sqlite(self, conn: Connection, steps: list[tuple[Table, str, tuple[str, ...], list[dict[str, Any]]]]
                      ) -> None:
        """One ``executemany`` per step, straight into sqlite3 when Loket's driver is under it."""
        driver = _sqlite_driver(conn)
        for table, kind, cols, rows in steps:
            sql, convert = _sqlite_plan(table, kind, cols)
            params = [convert(r) for r in rows]
            if driver is None:
                conn.exec_driver_sql(sql, params)
            else:  # its executemany is the whole cost
                with driver[1]:
                    driver[0].executemany(sql, params)
            ids = self._sqlite_id_cache(conn)
            if kind == "insert" and table.name in ids:  # keep the cache right: this went past the driver's watch
                if "id" not in cols:
                    del ids[table.name]  # SQLite numbered these rows itself
                else:
                    ids[table.name] = max(ids[table.name], max(r["id"] for r in rows) + 1)

    async def flush(self, conn: AsyncConnection) -> None:
        if self.pending:
            await conn.run_sync(self.flush_sync)


def current(conn: AsyncConnection) -> UnitOfWork | None:
    """The innermost unit of work open on ``conn`` in this task, if any."""
    uow = _innermost.get()
    if uow is not None and uow.conn is conn and uow.open:
        return uow
    return None


class unit_of_work:  # noqa: N801 - used as a context manager
    """Collect the hot-path writes made on ``conn`` and send them when the block ends (see the module doc)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.uow = UnitOfWork(conn.dialect.name, conn)
        self._token: Any = None

    async def __aenter__(self) -> UnitOfWork:
        # the stack also lives in the connection's info, where the autoflush hook (sync side) finds it
        stack: list[UnitOfWork] = self.conn.info.setdefault(UOW_KEY, [])
        if stack:
            await stack[-1].flush(self.conn)  # the outer writes go before this block's (and its savepoint)
            self.uow.parent = stack[-1]
        stack.append(self.uow)
        self._token = _innermost.set(self.uow)
        return self.uow

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                await self.uow.flush(self.conn)
        finally:
            self.uow.open = False
            _innermost.reset(self._token)
            stack = self.conn.info.get(UOW_KEY) or []
            if stack and stack[-1] is self.uow:
                stack.pop()
            if not stack:
                self.conn.info.pop(UOW_KEY, None)


@asynccontextmanager
async def write_only(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for writes that need no read first, collected in a unit of work and committed together.

    On PostgreSQL the unit of work's flush is one statement, and a statement is atomic on its own: it runs in
    autocommit, without BEGIN and COMMIT around it (one round trip instead of three; the dispatcher records
    every send result this way). Writing with a statement of its own inside the block would commit that
    statement alone, so it raises; reads are allowed. On SQLite this is an ordinary write transaction.
    """
    async with engine.connect() as conn:
        sqlite = is_sqlite(engine)
        if not sqlite:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.info[WRITE_ONLY_KEY] = True
        try:
            async with conn.begin() if sqlite else nullcontext(), unit_of_work(conn):
                yield conn
        finally:
            conn.info.pop(WRITE_ONLY_KEY, None)


# ---------------------------------------------------------------------- writers used by the hot path
async def insert(conn: AsyncConnection, table: Table, row: dict[str, Any], *, want_id: bool = False) -> int | None:
    """Insert a row: recorded in the unit of work when one is open, else executed now. ``want_id`` → its id."""
    uow = current(conn)
    if uow is None:
        if want_id:
            return int((await conn.execute(table.insert().returning(table.c.id), row)).scalar_one())
        await conn.execute(table.insert(), [row])
        return None
    if want_id:
        row = {**row, "id": await uow.next_id(conn, table)}
    uow.insert(table, row)
    return row.get("id")


async def update_row(conn: AsyncConnection, table: Table, pk: int, values: dict[str, Any]) -> None:
    """Update one row by id: merged into the unit of work when one is open, else executed now."""
    if not values:
        return
    uow = current(conn)
    if uow is None:
        await conn.execute(update(table).where(table.c.id == pk).values(**values))
        return
    uow.update(table, pk, dict(values))


# ---------------------------------------------------------------------- autoflush
_read_tables: weakref.WeakKeyDictionary[Any, frozenset[Table]] = weakref.WeakKeyDictionary()


def _tables_read(stmt: Select[Any]) -> frozenset[Table]:
    """Every table a SELECT reads, subqueries and aliases included (cached per statement object)."""
    found = _read_tables.get(stmt)
    if found is None:
        tables: set[Table] = set()
        for t in find_tables(stmt, include_aliases=True):
            base = getattr(t, "element", t)  # an alias reads its table
            if isinstance(base, Table):
                tables.add(base)
        found = _read_tables[stmt] = frozenset(tables)
    return found


def _pending_tables(stack: list[UnitOfWork]) -> set[Table]:
    tables: set[Table] = set()
    for u in stack:
        tables.update(u.inserts)
        tables.update(t for t, _ in u.updates)
    return tables


def _reads_only(clauseelement: Any) -> bool:
    """A SELECT statement, also given as text."""
    return isinstance(clauseelement, Select) or (
        isinstance(clauseelement, TextClause | str) and str(clauseelement).lstrip()[:6].upper() == "SELECT")


@event.listens_for(Engine, "before_execute")
def _autoflush(conn: Connection, clauseelement: Any, *_: Any) -> None:
    stack = conn.info.get(UOW_KEY)
    if not stack:
        return
    uow = stack[-1]
    if uow.flushing:
        return
    is_select = isinstance(clauseelement, Select)
    reads = _reads_only(clauseelement)
    # a SELECT of tables with no pending rows reads the same with or without a flush: keep collecting
    needs_flush = any(u.pending for u in stack) and (
        not is_select or bool(_pending_tables(stack) & _tables_read(clauseelement)))
    if conn.info.get(WRITE_ONLY_KEY) and (needs_flush or not reads):
        raise RuntimeError("a write_only block ran a statement that writes, or reads its pending rows (either would "
                           "commit apart from the block's writes); write through the unit of work, or use a "
                           "transaction")
    if needs_flush:
        for u in stack:
            if u.pending:
                u.flush_sync(conn)
    if reads:
        return
    for u in stack:
        u.other_writes += 1
    if uow.dialect == "sqlite":
        uow.forget_sqlite_ids()
