"""Queries and writes on the customer record, shared by the pipeline, the console, the API and the CLI."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import conversations, customers, identities, messages, touchpoints


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
    await conn.execute(
        touchpoints.insert().values(
            customer_id=customer_id,
            conversation_id=conversation_id,
            message_id=message_id,
            kind=kind,
            channel=channel,
            actor=actor,
            payload=payload or {},
            created_at=now,
        )
    )


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
    row = (
        await conn.execute(select(identities).where(identities.c.channel == channel, identities.c.address == address))
    ).mappings().first()
    if row is not None:
        cust = (await conn.execute(select(customers).where(customers.c.id == row["customer_id"]))).mappings().one()
        return dict(row), dict(cust), False
    cust_id = (
        await conn.execute(
            customers.insert()
            .values(
                display_name=display_name,
                language=language or "id",
                timezone="Asia/Jakarta",
                tags=[],
                attributes={},
                opted_out=False,
                created_at=now,
                last_seen_at=now,
            )
            .returning(customers.c.id)
        )
    ).scalar_one()
    ident_id = (
        await conn.execute(
            identities.insert()
            .values(
                customer_id=cust_id,
                channel=channel,
                address=address,
                display_name=display_name,
                verified=channel in {"whatsapp", "telegram"},
                unreachable=False,
                meta={},
                created_at=now,
            )
            .returning(identities.c.id)
        )
    ).scalar_one()
    await add_touchpoint(
        conn, customer_id=cust_id, kind="customer_created", now=now, channel=channel,
        payload={"channel": channel, "address": address},
    )
    ident = (await conn.execute(select(identities).where(identities.c.id == ident_id))).mappings().one()
    cust = (await conn.execute(select(customers).where(customers.c.id == cust_id))).mappings().one()
    return dict(ident), dict(cust), True


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
