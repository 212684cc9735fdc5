"""The unit of work: collected writes go out when the block ends, and every other statement sees them first."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Text, cast, event, func, insert, select

from bot.messages import Attachment, InboundMessage
from storage.db import make_engine
from storage.models import conversations, customers, identities, messages, touchpoints
from storage.repositories import add_touchpoint
from storage.unit_of_work import current, unit_of_work, update_row, write_only
from storage.unit_of_work import insert as uow_insert
from tests.support import LoketServer, wait_for

NOW = datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=UTC)


def customer_row(name: str) -> dict[str, object]:
    return {"display_name": name, "language": "id", "timezone": "Asia/Jakarta", "tags": ["a"],
            "attributes": {"k": 1}, "opted_out": False, "opted_out_at": None, "merged_into_id": None,
            "created_at": NOW, "last_seen_at": None}


def statements_sent(engine: Any) -> list[str]:
    """Every statement the engine sends from now on, as the driver gets it."""
    sent: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda conn, cur, stmt, *a: sent.append(stmt))
    return sent


async def count(conn: object, table: object) -> int:
    return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[attr-defined]


async def test_writes_wait_for_the_end_and_reads_see_them_first(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            async with unit_of_work(conn) as uow:
                cid = await uow_insert(conn, customers, customer_row("Sari"), want_id=True)
                assert cid is not None and uow.pending
                await update_row(conn, customers, cid, {"display_name": "Sari W."})  # merged into the insert
                await add_touchpoint(conn, customer_id=cid, kind="customer_created", now=NOW, payload={"x": None})
                assert len(uow.inserts[customers]) == 1 and not uow.updates
                # a read is another statement: the pending rows are written before it runs
                got = (await conn.execute(select(customers.c.display_name, customers.c.tags, customers.c.created_at)
                                          .where(customers.c.id == cid))).one()
                assert not uow.pending
                assert got[0] == "Sari W." and got[1] == ["a"]
                assert got[2].replace(tzinfo=UTC) == NOW  # same storage format as SQLAlchemy's own writes
                # ids handed out after a direct insert do not collide with it
                await conn.execute(insert(customers).values(**customer_row("direct")))
                other = await uow_insert(conn, customers, customer_row("Budi"), want_id=True)
                await update_row(conn, customers, cid, {"last_seen_at": NOW})
                assert current(conn) is uow
            assert current(conn) is None
            names = sorted(r[0] for r in await conn.execute(select(customers.c.display_name)))
            assert names == ["Budi", "Sari W.", "direct"]
            assert (await conn.execute(select(customers.c.last_seen_at).where(customers.c.id == cid))).scalar()
            assert other is not None and other != cid
            assert await count(conn, touchpoints) == 1
    finally:
        await engine.dispose()


async def test_only_reads_of_tables_with_pending_rows_flush(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn, unit_of_work(conn) as uow:
            cid = await uow_insert(conn, customers, customer_row("Ani"), want_id=True)
            await conn.execute(select(func.count()).select_from(messages))  # another table: no flush needed
            assert uow.pending
            # a table read only inside a subquery still counts
            inner = select(customers.c.id).where(customers.c.display_name == "Ani").scalar_subquery()
            got = (await conn.execute(select(identities.c.id).where(identities.c.customer_id == inner))).all()
            assert got == [] and not uow.pending
            assert (await conn.execute(select(customers.c.id))).scalar() == cid
    finally:
        await engine.dispose()


async def test_a_rolled_back_savepoint_drops_its_own_writes_only(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn, unit_of_work(conn):
            kept = await uow_insert(conn, customers, customer_row("kept"), want_id=True)
            with pytest.raises(RuntimeError, match="poisoned"):
                async with conn.begin_nested(), unit_of_work(conn):
                    await uow_insert(conn, customers, customer_row("dropped"), want_id=True)
                    raise RuntimeError("poisoned")
            after = await uow_insert(conn, customers, customer_row("after"), want_id=True)
        async with engine.connect() as conn:
            rows = {r[0]: r[1] for r in await conn.execute(select(customers.c.display_name, customers.c.id))}
        assert set(rows) == {"kept", "after"}
        assert rows["kept"] == kept and rows["after"] == after
    finally:
        await engine.dispose()


async def test_nothing_is_written_when_the_block_fails(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with pytest.raises(ValueError, match="boom"):
            async with engine.begin() as conn, unit_of_work(conn):
                await uow_insert(conn, customers, customer_row("ghost"), want_id=True)
                raise ValueError("boom")
        async with engine.connect() as conn:
            assert await count(conn, customers) == 0
    finally:
        await engine.dispose()


async def test_rows_of_several_tables_go_out_in_foreign_key_order(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            async with unit_of_work(conn):
                # one flush, four tables: written parents first (SQLite and PostgreSQL check the foreign keys)
                cid = await uow_insert(conn, customers, customer_row("Ani"), want_id=True)
                iid = await uow_insert(conn, identities, {
                    "customer_id": cid, "channel": "telegram", "address": "42", "display_name": None,
                    "verified": True, "unreachable": False, "unreachable_reason": None, "last_inbound_at": None,
                    "meta": {}, "created_at": NOW}, want_id=True)
                conv = await uow_insert(conn, conversations, {
                    "customer_id": cid, "identity_id": iid, "channel": "telegram", "state": "bot", "flow": None,
                    "language": None, "priority": "normal", "labels": [], "meta": {}, "created_at": NOW,
                    "updated_at": NOW}, want_id=True)
                for i in range(3):
                    await uow_insert(conn, messages, {
                        "conversation_id": conv, "customer_id": cid, "channel": "telegram", "direction": "in",
                        "author": "customer", "agent_id": None, "body": f"m{i}", "choices": [],
                        "attachments": [], "purpose": "message", "channel_message_id": f"m:{i}",
                        "status": "received", "error": None, "meta": {}, "created_at": NOW, "sent_at": None,
                        "delivered_at": None}, want_id=True)
            flow = (await conn.execute(select(conversations.c.flow).where(conversations.c.id == conv))).scalar()
            assert flow is None
            bodies = [r[0] for r in await conn.execute(select(messages.c.body).order_by(messages.c.id))]
            assert bodies == ["m0", "m1", "m2"]
    finally:
        await engine.dispose()


async def test_a_flush_is_one_statement_on_postgresql_and_writes_every_value_as_sqlalchemy_would(db_url: str) -> None:
    """PostgreSQL: inserts of several tables and updates go out as one statement (arrays per column), whatever
    the number of rows; the values (JSON, NULL, timestamps, booleans) read back as written."""
    engine = make_engine(db_url)
    sent = statements_sent(engine)
    try:
        async with engine.begin() as conn:
            cid = await uow_insert(conn, customers, customer_row("Ani"), want_id=True)
            statements: list[str] = []
            for rows in (1, 5):
                async with unit_of_work(conn) as uow:
                    await update_row(conn, customers, cid, {"display_name": f"Ani {rows}", "opted_out": True,
                                                            "attributes": {"rows": rows, "none": None}})
                    for i in range(rows):
                        await add_touchpoint(conn, customer_id=cid, kind="note", now=NOW,
                                             payload={"i": i, "text": "tanpa 'kutip' \"ganda\""})
                    await add_touchpoint(conn, customer_id=cid, kind="note", now=NOW, payload=None)
                    sent.clear()
                    await uow.flush(conn)
                    statements.extend(sent)

                got = (await conn.execute(select(customers.c.display_name, customers.c.opted_out,
                                                 customers.c.attributes).where(customers.c.id == cid))).one()
                assert tuple(got) == (f"Ani {rows}", True, {"rows": rows, "none": None})
            if engine.dialect.name == "postgresql":  # one statement per flush, the same text for 1 and 5 rows
                assert len(statements) == 2 and statements[0] == statements[1] and statements[0].startswith("WITH ")
            notes = (await conn.execute(select(touchpoints.c.payload, touchpoints.c.conversation_id)
                                        .where(touchpoints.c.kind == "note").order_by(touchpoints.c.id))).all()
            assert [n[0] for n in notes[:2]] == [{"i": 0, "text": "tanpa 'kutip' \"ganda\""}, {}] and len(notes) == 8
            assert {n[1] for n in notes} == {None}
            stamps = {r[0].replace(tzinfo=UTC) for r in await conn.execute(select(touchpoints.c.created_at))}
            assert stamps == {NOW}
    finally:
        await engine.dispose()


async def test_a_column_with_one_value_in_every_row_is_sent_once_and_every_row_gets_it(db_url: str) -> None:
    """PostgreSQL sends a column whose rows all hold the same value as one parameter, not an array. Every row
    still gets the value: in updates, in inserts whose rows are alike in every column (they stay separate rows),
    and in inserts with ids; a value that differs in one row keeps its column an array."""
    engine = make_engine(db_url)
    sent = statements_sent(engine)
    flushes: list[str] = []
    try:
        async with engine.begin() as conn:
            ids = [await uow_insert(conn, customers, customer_row(f"C{i}"), want_id=True) for i in range(3)]
            later = NOW + timedelta(minutes=1)
            async with unit_of_work(conn) as uow:  # every column but the id is constant
                for cid in ids:
                    await update_row(conn, customers, cid, {"language": "en", "last_seen_at": later})
                sent.clear()
            flushes += sent
            async with unit_of_work(conn) as uow:  # alike in every column, no id: three rows all the same
                for _ in range(3):
                    await add_touchpoint(conn, customer_id=ids[0], kind="note", now=NOW, channel="telegram",
                                         actor="agent", payload={"same": True})
                sent.clear()
            flushes += sent
            async with unit_of_work(conn) as uow:  # the customers differ, and one row's payload
                for i, cid in enumerate(ids):
                    await add_touchpoint(conn, customer_id=cid, kind="tagged", now=NOW, channel="telegram",
                                         payload={"tag": "vip"} if i < 2 else {"tag": "new"})
                sent.clear()
            flushes += sent
            assert not uow.pending
            got = {r[0]: (r[1], r[2].replace(tzinfo=UTC)) for r in await conn.execute(
                select(customers.c.id, customers.c.language, customers.c.last_seen_at))}
            assert all(got[cid] == ("en", later) for cid in ids)
            notes = (await conn.execute(select(touchpoints.c.customer_id, touchpoints.c.actor, touchpoints.c.payload,
                                               touchpoints.c.created_at).where(touchpoints.c.kind == "note"))).all()
            assert [(n[0], n[1], n[2], n[3].replace(tzinfo=UTC)) for n in notes] == \
                [(ids[0], "agent", {"same": True}, NOW)] * 3
            tagged = (await conn.execute(select(touchpoints.c.customer_id, touchpoints.c.payload)
                                         .where(touchpoints.c.kind == "tagged").order_by(touchpoints.c.id))).all()
            assert [tuple(t) for t in tagged] == [(ids[0], {"tag": "vip"}), (ids[1], {"tag": "vip"}),
                                                  (ids[2], {"tag": "new"})]
        if engine.dialect.name == "postgresql":
            update, alike, differing = flushes
            assert 'SET "language" = $1::VARCHAR(8), "last_seen_at" = $2::TIMESTAMP WITH TIME ZONE FROM ' \
                   'unnest($3::BIGINT[]) AS v("id")' in update
            assert alike.count("[]") == 1  # one column stays an array: it gives the insert its three rows
            assert differing.count("[]") == 2 and '$1::BIGINT[]' in differing and '::JSON[]' in differing
    finally:
        await engine.dispose()


async def test_a_flush_shape_has_a_bounded_number_of_statements(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which columns are constant depends on the rows; past ``_PG_VARIANTS`` statements for one shape, its
    flushes send arrays only (every pooled connection prepares each statement, and their caches are bounded).
    The rows are written right either way."""
    import storage.unit_of_work as uow_module

    monkeypatch.setattr(uow_module, "_pg_plans", {})
    monkeypatch.setattr(uow_module, "_pg_variants", {})
    varying = ("conversation_id", "message_id", "kind", "actor")
    engine = make_engine(db_url)
    sent = statements_sent(engine)
    flushes: list[str] = []
    expected: list[tuple[Any, ...]] = []
    try:
        async with engine.begin() as conn:
            for k in range(1, 13):  # twelve flushes of two rows, each with another set of differing columns
                async with unit_of_work(conn):
                    for r in range(2):
                        row = {"conversation_id": 7, "message_id": 8, "kind": "note", "actor": "agent"}
                        row.update({c: (f"{c}{r}" if c in {"kind", "actor"} else 100 * k + r)
                                    for bit, c in enumerate(varying) if k & (1 << bit)})
                        await add_touchpoint(conn, customer_id=k, now=NOW, channel="telegram", payload={"r": r},
                                             **row)
                        expected.append((k, row["conversation_id"], row["message_id"], row["kind"], row["actor"]))
                    sent.clear()
                flushes += sent
            got = [tuple(r) for r in await conn.execute(
                select(touchpoints.c.customer_id, touchpoints.c.conversation_id, touchpoints.c.message_id,
                       touchpoints.c.kind, touchpoints.c.actor).order_by(touchpoints.c.id))]
        assert got == expected
        if engine.dialect.name == "postgresql":
            assert len(flushes) == 12 and len(set(flushes)) == uow_module._PG_VARIANTS + 1
            assert all(f.count("[]") == 8 for f in flushes[uow_module._PG_VARIANTS:])  # arrays only
    finally:
        await engine.dispose()


async def test_rows_written_by_a_unit_of_work_read_back_exactly_as_sqlalchemy_writes_them(db_url: str) -> None:
    """Awkward values (quotes, backslashes, newlines, emoji, None in a JSON column — JSON null, not SQL NULL —
    non-string keys, naive and non-UTC timestamps, big integers, False) go through the unit of work's flush
    (on PostgreSQL one JSON document per step) and read back as the same row inserted by SQLAlchemy does."""
    awkward = {"display_name": 'Bu \'Ani\' "Sari" \\ C:\\path\n2nd line \t 🙂 ñ', "language": "en",
               "timezone": "Asia/Makassar", "tags": None, "attributes": {1: "one", "n": None, "l": [1.5, True]},
               "opted_out": False, "opted_out_at": datetime(2026, 12, 1, 9, 30, 15, 5),
               "merged_into_id": None, "created_at": datetime(2026, 12, 1, 16, 30, 15, 123456,
                                                              tzinfo=timezone(timedelta(hours=7))),
               "last_seen_at": None}
    columns = [cast(c, Text) if c.name in {"tags", "attributes"} else c for c in customers.c if c.name != "id"]
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            plain = await conn.scalar(insert(customers).values(**awkward).returning(customers.c.id))
            async with unit_of_work(conn):
                written = await uow_insert(conn, customers, dict(awkward), want_id=True)
                updated = await uow_insert(conn, customers, customer_row("later"), want_id=True)
            async with unit_of_work(conn):  # the update path of the flush, on a row already stored
                await update_row(conn, customers, updated, {k: v for k, v in awkward.items() if k != "created_at"})
            got = {r[0]: tuple(r[1:]) for r in await conn.execute(select(customers.c.id, *columns))}
        expected = got[plain]
        assert expected[list(customers.c.keys()).index("tags") - 1] == "null"  # JSON null, as SQLAlchemy writes it
        assert got[written] == expected
        assert got[updated][:-2] == expected[:-2]  # all but created_at (not updated) and last_seen_at
    finally:
        await engine.dispose()


async def test_ids_of_every_table_a_batch_expects_come_in_one_round_trip(db_url: str) -> None:
    engine = make_engine(db_url)
    statements = statements_sent(engine)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(customers).values(**customer_row("before")))  # ids must not collide
            async with unit_of_work(conn) as uow:
                uow.expect[customers] = 3
                uow.expect[identities] = 2
                uow.expect[messages] = 0  # said, but not needed: no ids fetched for it
                statements.clear()
                cids = [await uow_insert(conn, customers, customer_row(f"c{i}"), want_id=True) for i in range(3)]
                iids = [await uow_insert(conn, identities, {
                    "customer_id": cids[i], "channel": "telegram", "address": str(i), "display_name": None,
                    "verified": True, "unreachable": False, "unreachable_reason": None, "last_inbound_at": None,
                    "meta": {}, "created_at": NOW}, want_id=True) for i in range(2)]
                id_statements = len(statements)
            rows = {r[0]: r[1] for r in await conn.execute(select(customers.c.display_name, customers.c.id))}
            linked = sorted(r[0] for r in await conn.execute(select(identities.c.customer_id)))
        # PostgreSQL: one statement for both tables' sequences; SQLite: one max(id) read per table
        assert id_statements == (1 if engine.dialect.name == "postgresql" else 2)
        assert cids == sorted(cids) and len(set(cids)) == 3 and rows["before"] not in cids
        assert [rows[f"c{i}"] for i in range(3)] == cids
        assert iids == sorted(iids) and len(set(iids)) == 2 and linked == sorted(cids[:2])
        # after the block's ids are used up, the next one still comes from the sequence (no collision)
        async with engine.begin() as conn, unit_of_work(conn):
            more = await uow_insert(conn, customers, customer_row("later"), want_id=True)
        assert more is not None and more > max(c for c in cids if c is not None)
    finally:
        await engine.dispose()


async def test_ids_handed_out_across_transactions_never_collide_with_other_writers(db_url: str) -> None:
    """On SQLite the driver connection keeps each table's next id between transactions; every other way a row
    can get an id (another connection or process, a plain insert, a rolled-back transaction) must not collide."""
    engine, other = make_engine(db_url), make_engine(db_url)
    id_reads: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda conn, cur, stmt, *a: id_reads.append(stmt) if "ORDER BY customers.id DESC" in stmt else None)

    async def add(name: str) -> int:
        async with engine.begin() as conn, unit_of_work(conn):
            cid = await uow_insert(conn, customers, customer_row(name), want_id=True)
        assert cid is not None
        return cid

    try:
        first = await add("first")
        id_reads.clear()
        second = await add("second")
        # SQLite: the next id came from the connection's cache, no maximum read again
        assert not id_reads and second > first
        async with other.begin() as conn:  # another connection commits a row with an id the database chose
            await conn.execute(insert(customers).values(**customer_row("elsewhere")))
        third = await add("third")
        async with engine.begin() as conn:  # the same connection, a plain insert outside any unit of work
            await conn.execute(insert(customers).values(**customer_row("plain")))
        fourth = await add("fourth")
        async with engine.begin() as conn, unit_of_work(conn):  # a unit of work that lets SQLite number its rows
            await uow_insert(conn, customers, customer_row("numbered by the database"))
        with pytest.raises(RuntimeError):
            async with engine.begin() as conn, unit_of_work(conn):
                await uow_insert(conn, customers, customer_row("rolled back"), want_id=True)
                await conn.execute(select(customers.c.id))  # written, then the transaction fails
                raise RuntimeError("fail the transaction")
        fifth = await add("fifth")
        async with engine.connect() as conn:
            rows = {r[0]: r[1] for r in await conn.execute(select(customers.c.display_name, customers.c.id))}
        assert sorted(rows) == ["elsewhere", "fifth", "first", "fourth", "numbered by the database", "plain",
                                "second", "third"]
        assert len(set(rows.values())) == 8
        assert [rows[n] for n in ("first", "second", "third", "fourth", "fifth")] == [
            first, second, third, fourth, fifth]
    finally:
        await engine.dispose()
        await other.dispose()


def test_inbound_payload_round_trips_every_field() -> None:
    msg = InboundMessage(channel="telegram", address="7", provider_message_id="m:7:1", text="halo",
                         button_payload="agent", display_name="Budi", language_hint="id",
                         attachments=(Attachment("a.jpg", "image/jpeg", 3, sha256="ab"),), kind="message",
                         meta={"telegram": {"message_id": 1}})
    payload = msg.to_payload()
    assert set(payload) == {f.name for f in fields(InboundMessage)}
    assert InboundMessage.from_payload(payload) == msg


async def test_a_stored_and_routed_batch_fetches_its_ids_once_not_per_message(
        loket: LoketServer, caplog: pytest.LogCaptureFixture) -> None:
    """``loket run`` routes a batch as it is stored (never falling back to storing only); the ids of the
    messages, replies and their outbox rows (claimed for this process's dispatcher) come in bulk: on
    PostgreSQL with the statement that stores the batch, then one fetch per batch for new customers and
    identities and one for new conversations; not one sequence round trip (and one flush) per reply."""
    statements: list[str] = []
    event.listen(loket.rt.engine.sync_engine, "before_cursor_execute",
                 lambda conn, cur, stmt, *a: statements.append(stmt))
    n = 30

    async def send_round(tag: str, replies: int) -> None:
        msgs = [InboundMessage(channel="webchat", address=f"visitor-{i}", provider_message_id=f"uow-{tag}-{i}",
                               text="halo") for i in range(n)]
        assert all(await asyncio.gather(*(loket.rt.inbox.submit(m) for m in msgs)))

        async def answered() -> bool:
            out = await loket.scalar(select(func.count()).select_from(messages).where(messages.c.direction == "out"))
            return int(out) >= replies

        await wait_for(answered)

    def counts() -> tuple[int, int]:
        batches = sum("INSERT INTO INBOX_ITEMS" in s.upper() for s in statements)
        fetches = sum(s.lstrip().upper().startswith("SELECT") and "nextval" in s for s in statements)
        return batches, fetches

    await send_round("new", n)  # 30 new customers
    batches, fetches = counts()
    assert batches >= 1
    if loket.rt.engine.dialect.name == "postgresql":
        assert fetches <= 2 * batches, (fetches, batches)
    statements.clear()
    await send_round("again", 2 * n)  # the same 30 customers again: no new rows but messages and replies
    batches, fetches = counts()
    assert batches >= 1
    if loket.rt.engine.dialect.name == "postgresql":  # a message, its reply and the outbox row: ids came along
        assert fetches == 0, (fetches, batches)
    fallbacks = [r.getMessage() for r in caplog.records if r.name == "loket.pipeline" and r.levelno >= logging.ERROR]
    assert fallbacks == []


async def test_write_only_commits_the_block_as_one_atomic_statement(db_url: str, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    """``write_only``: the block's writes go out together (PostgreSQL: one statement in autocommit, no BEGIN or
    COMMIT); if that statement fails, nothing of the block is written; a write of its own inside raises."""
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

    begins: list[object] = []  # transactions asyncpg really started (BEGIN sent)
    start = AsyncAdapt_asyncpg_connection._start_transaction
    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "_start_transaction", lambda self: (
        begins.append(self) if self.isolation_level != "autocommit" else None, start(self))[1])
    engine = make_engine(db_url)
    sent = statements_sent(engine)
    try:
        async with engine.begin() as conn:
            cid = await uow_insert(conn, customers, customer_row("Dewi"), want_id=True)
        begins.clear()
        sent.clear()
        async with write_only(engine) as conn:
            await update_row(conn, customers, cid, {"display_name": "Dewi R."})
            await add_touchpoint(conn, customer_id=cid, kind="note", now=NOW, payload={"n": 1})
        if engine.dialect.name == "postgresql":
            assert len(sent) == 1 and begins == []
        async with engine.connect() as conn:
            assert await conn.scalar(select(customers.c.display_name).where(customers.c.id == cid)) == "Dewi R."
            assert await count(conn, touchpoints) == 1

        with pytest.raises(Exception, match="(?i)null"):  # a touchpoint must say what kind it is
            async with write_only(engine) as conn:
                await update_row(conn, customers, cid, {"display_name": "lost"})
                await add_touchpoint(conn, customer_id=cid, kind=None, now=NOW)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="write_only"):
            async with write_only(engine) as conn:
                await update_row(conn, customers, cid, {"display_name": "lost too"})
                await conn.execute(insert(touchpoints).values(customer_id=cid, kind="note", actor="system",
                                                              payload={}, created_at=NOW))
        async with engine.connect() as conn:
            assert await conn.scalar(select(customers.c.display_name).where(customers.c.id == cid)) == "Dewi R."
            assert await count(conn, touchpoints) == 1
    finally:
        await engine.dispose()
