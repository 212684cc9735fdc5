"""Queries and writes on the customer record (and the inbox), shared by the pipeline, the channels, the console,
the API and the CLI."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import one_of
from storage.models import conversations, customers, identities, inbox_items, messages, touchpoints
from storage.unit_of_work import insert


async def inbox_has(engine: AsyncEngine, channel: str, provider_message_id: str) -> bool:
    """Is this provider message stored already (a redelivery)? Lets a channel skip work such as downloading its
    media again; the unique key on the inbox still decides at insert time."""
    async with engine.connect() as conn:
        found = (await conn.execute(
            select(inbox_items.c.id).where(inbox_items.c.channel == channel,
                                           inbox_items.c.provider_message_id == provider_message_id)
        )).first()
    return found is not None


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
    """Append a touchpoint (inside a unit of work it is written with the others when the work is flushed)."""
    await insert(conn, touchpoints, {
        "customer_id": customer_id,
        "conversation_id": conversation_id,
        "message_id": message_id,
        "kind": kind,
        "channel": channel,
        "actor": actor,
        "payload": payload or {},
        "created_at": now,
    })


_IDENTITY_WITH_CUSTOMER = (
    select(identities, *[c.label(f"c_{c.name}") for c in customers.c])
    .join(customers, customers.c.id == identities.c.customer_id)
    .where(identities.c.channel == bindparam("ch"), identities.c.address == bindparam("addr"))
)
_IDENTITIES_WITH_CUSTOMERS = (
    select(identities, *[c.label(f"c_{c.name}") for c in customers.c])
    .join(customers, customers.c.id == identities.c.customer_id)
    .where(one_of(identities.c.channel, "chs"), one_of(identities.c.address, "addrs"))
)
_IDENTITY_COLUMNS = [c.name for c in identities.c]
_CUSTOMER_COLUMNS = [c.name for c in customers.c]


async def find_identities(
    conn: AsyncConnection, addresses: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]:
    """(channel, address) → (identity row, customer row) for those that exist, in one query."""
    if not addresses:
        return {}
    if len(addresses) == 1:
        ch, addr = addresses[0]
        rows = (await conn.execute(_IDENTITY_WITH_CUSTOMER, {"ch": ch, "addr": addr})).mappings().all()
    else:
        rows = (await conn.execute(_IDENTITIES_WITH_CUSTOMERS, {
            "chs": sorted({ch for ch, _ in addresses}), "addrs": sorted({addr for _, addr in addresses}),
        })).mappings().all()
    wanted = set(addresses)
    found: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
    for row in rows:
        ident = {c: row[c] for c in _IDENTITY_COLUMNS}
        cust = {c: row[f"c_{c}"] for c in _CUSTOMER_COLUMNS}
        if (ident["channel"], ident["address"]) in wanted:
            found[(ident["channel"], ident["address"])] = (ident, cust)
    return found


async def find_or_create_customer(
    conn: AsyncConnection,
    *,
    channel: str,
    address: str,
    now: datetime,
    display_name: str | None = None,
    language: str | None = None,
    known: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Identity (channel, address) → (identity row, customer row, created?).

    ``known`` is what ``find_identities`` returned for a batch: an address missing from it is new.
    """
    if known is None:
        known = await find_identities(conn, [(channel, address)])
    found = known.get((channel, address))
    if found is not None:
        return found[0], found[1], False
    cust: dict[str, Any] = {
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
    cust_id = await insert(conn, customers, cust, want_id=True)
    assert cust_id is not None
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
    ident_id = await insert(conn, identities, ident, want_id=True)
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
