"""Queries and writes on the customer record, shared by the pipeline, the console, the API and the CLI."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import conversations, customers, identities, messages, touchpoints

TOUCH_BUFFER = "loket.touch_buffer"


async def add_touchpoint(
    conn: AsyncConnection,
    *,
    customer_id: int,
    kind: str,
    now: datetime,
    conversation_id: int | None = None,
    message_id: int | None = None,
    channel: str | None = None,
    actor: str = "system",
    payload: dict[str, Any] | None = None,
) -> None:
    """Append a touchpoint. Inside ``buffered_touchpoints`` the rows are written in one statement at the end."""
    row = {
        "customer_id": customer_id,
        "conversation_id": conversation_id,
        "message_id": message_id,
        "kind": kind,
        "channel": channel,
        "actor": actor,
        "payload": payload or {},
        "created_at": now,
    }
    buffer = conn.info.get(TOUCH_BUFFER)
    if buffer is not None:
        buffer.append(row)
    else:
        await conn.execute(touchpoints.insert(), [row])


class buffered_touchpoints:  # noqa: N801 - used as a context manager
    """Collect touchpoints written on ``conn`` and insert them in one executemany before leaving.

    Touchpoints are append-only and never read back inside the transaction that writes them, so deferring
    the insert to the end of the transaction changes nothing but the number of round trips.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def __aenter__(self) -> None:
        self.conn.info[TOUCH_BUFFER] = []

    async def flush(self) -> None:
        rows = self.conn.info.get(TOUCH_BUFFER)
        if rows:
            self.conn.info[TOUCH_BUFFER] = []
            await self.conn.execute(touchpoints.insert(), rows)

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            self.conn.info.pop(TOUCH_BUFFER, None)


_IDENTITY_WITH_CUSTOMER = (
    select(identities, *[c.label(f"c_{c.name}") for c in customers.c])
    .join(customers, customers.c.id == identities.c.customer_id)
    .where(identities.c.channel == bindparam("ch"), identities.c.address == bindparam("addr"))
)
_INSERT_CUSTOMER = customers.insert().returning(customers.c.id)
_INSERT_IDENTITY = identities.insert().returning(identities.c.id)


async def find_or_create_customer(
    conn: AsyncConnection,
    *,
    channel: str,
    address: str,
    now: datetime,
    display_name: str | None = None,
    language: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Identity (channel, address) → (identity row, customer row, created?)."""
    row = (await conn.execute(_IDENTITY_WITH_CUSTOMER, {"ch": channel, "addr": address})).mappings().first()
    if row is not None:
        ident = {c.name: row[c.name] for c in identities.c}
        cust = {c.name: row[f"c_{c.name}"] for c in customers.c}
        return ident, cust, False
    cust = {
        "display_name": display_name,
        "language": language or "id",
        "timezone": "Asia/Jakarta",
        "tags": [],
        "attributes": {},
        "opted_out": False,
        "opted_out_at": None,
        "merged_into_id": None,
        "created_at": now,
        "last_seen_at": now,
    }
    cust_id = (await conn.execute(_INSERT_CUSTOMER, cust)).scalar_one()
    ident = {
        "customer_id": cust_id,
        "channel": channel,
        "address": address,
        "display_name": display_name,
        "verified": channel in {"whatsapp", "telegram"},
        "unreachable": False,
        "unreachable_reason": None,
        "last_inbound_at": None,
        "meta": {},
        "created_at": now,
    }
    ident_id = (await conn.execute(_INSERT_IDENTITY, ident)).scalar_one()
    await add_touchpoint(
        conn, customer_id=cust_id, kind="customer_created", now=now, channel=channel,
        payload={"channel": channel, "address": address},
    )
    return {"id": ident_id, **ident}, {"id": cust_id, **cust}, True


async def merge_customers(
    conn: AsyncConnection, *, source_id: int, target_id: int, now: datetime, actor: str, reason: str
) -> None:
    """Fold customer ``source_id`` into ``target_id``: identities, conversations, messages and timeline move."""
    if source_id == target_id:
        return
    src = (await conn.execute(select(customers).where(customers.c.id == source_id))).mappings().one()
    tgt = (await conn.execute(select(customers).where(customers.c.id == target_id))).mappings().one()
    for table in (identities, conversations, messages, touchpoints):
        await conn.execute(update(table).where(table.c.customer_id == source_id).values(customer_id=target_id))
    attrs = {**(src["attributes"] or {}), **(tgt["attributes"] or {})}
    tags = sorted(set(src["tags"] or []) | set(tgt["tags"] or []))
    await conn.execute(
        update(customers)
        .where(customers.c.id == target_id)
        .values(
            attributes=attrs,
            tags=tags,
            display_name=tgt["display_name"] or src["display_name"],
            opted_out=bool(tgt["opted_out"] or src["opted_out"]),
        )
    )
    await conn.execute(update(customers).where(customers.c.id == source_id).values(merged_into_id=target_id))
    await add_touchpoint(
        conn, customer_id=target_id, kind="identity_merged", now=now, actor=actor,
        payload={"merged_customer_id": source_id, "reason": reason},
    )


async def customer_timeline(conn: AsyncConnection, customer_id: int, limit: int = 1000) -> list[dict[str, Any]]:
    rows = (
        await conn.execute(
            select(touchpoints)
            .where(touchpoints.c.customer_id == customer_id)
            .order_by(touchpoints.c.id)
            .limit(limit)
        )
    ).mappings().all()
    return [dict(r) for r in rows]


async def customer_with_identities(conn: AsyncConnection, customer_id: int) -> dict[str, Any] | None:
    cust = (await conn.execute(select(customers).where(customers.c.id == customer_id))).mappings().first()
    if cust is None:
        return None
    idents = (
        await conn.execute(select(identities).where(identities.c.customer_id == customer_id).order_by(identities.c.id))
    ).mappings().all()
    return {**dict(cust), "identities": [dict(i) for i in idents]}
