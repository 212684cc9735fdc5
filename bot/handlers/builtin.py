"""Built-in handlers: order status lookup, set a customer attribute, tag the conversation."""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

import aiohttp
from sqlalchemy import select

from bot.effects import UpdateConversation, UpdateCustomer
from bot.handlers.registry import HandlerContext, HandlerError, register

log = logging.getLogger("loket.flows")

STATUS_LABELS: dict[str, dict[str, str]] = {
    "paid": {"id": "sudah dibayar, sedang disiapkan", "en": "paid, being prepared"},
    "packed": {"id": "sudah dikemas, menunggu kurir", "en": "packed, waiting for the courier"},
    "shipped": {"id": "dalam pengiriman", "en": "on its way"},
    "delivered": {"id": "sudah diterima", "en": "delivered"},
    "cancelled": {"id": "dibatalkan", "en": "cancelled"},
    "returned": {"id": "dikembalikan (retur)", "en": "returned"},
}
_order_no_re = re.compile(r"[A-Z0-9][A-Z0-9-]{2,40}")


def normalize_order_no(raw: str) -> str:
    text = raw.strip().upper().replace("#", "").replace(" ", "")
    m = _order_no_re.search(text)
    return m.group(0) if m else text


def _describe(data: dict[str, Any], lang: str) -> dict[str, Any]:
    status = str(data.get("status") or "").lower()
    label = STATUS_LABELS.get(status, {}).get(lang) or status
    items = data.get("items") or []
    names = ", ".join(str(i.get("name") if isinstance(i, dict) else i) for i in items)
    return {
        "found": True,
        "order_no": data.get("order_no"),
        "status": status,
        "status_label": label,
        "items": names,
        "total": data.get("total"),
        "carrier": data.get("carrier") or "",
        "tracking_no": data.get("tracking_no") or "",
        "eta": data.get("eta") or "",
    }


@register("order_status")
async def order_status(ctx: HandlerContext) -> dict[str, Any]:
    """Look an order up by number: ``LOKET_ORDERS_URL`` (GET {url}/{order_no} → JSON) or the ``orders`` table."""
    order_no = normalize_order_no(str(ctx.args.get("order_no") or ctx.slots.get("order_no") or ""))
    if not order_no:
        return {"found": False, "order_no": ""}
    settings = ctx.services.get("settings")
    url = (settings.env.get("LOKET_ORDERS_URL") if settings is not None else None) or ""
    if url:
        timeout = aiohttp.ClientTimeout(total=float(ctx.args.get("timeout") or 5))
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.get(f"{url.rstrip('/')}/{quote(order_no)}") as resp:
                if resp.status == 404:
                    return {"found": False, "order_no": order_no}
                if resp.status != 200:
                    raise HandlerError(f"order service answered HTTP {resp.status}")
                data = await resp.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise HandlerError(f"order service unreachable: {exc.__class__.__name__}") from exc
        if not isinstance(data, dict):
            raise HandlerError("order service answered something other than a JSON object")
        return _describe({"order_no": order_no, **data}, ctx.language)
    from bot.flows.models import orders

    candidates = {order_no, re.sub(r"^([A-Z]+)(\d+)$", r"\1-\2", order_no)}
    query = select(orders).where(orders.c.order_no.in_(sorted(candidates)))
    if ctx.conn is not None:
        row = (await ctx.conn.execute(query)).mappings().first()
    else:
        engine = ctx.services["flows.engine"]
        async with engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
    if row is None:
        return {"found": False, "order_no": order_no}
    return _describe(dict(row), ctx.language)


@register("set_attribute")
async def set_attribute(ctx: HandlerContext) -> dict[str, Any]:
    """Store values on the customer record: ``args: {name: value, …}`` (values may be ``{slot}`` templates)."""
    if not ctx.args:
        raise HandlerError("set_attribute needs args such as {preferred_branch: \"{branch}\"}")
    values = {str(k): v for k, v in ctx.args.items()}
    ctx.effects.append(UpdateCustomer(attributes=values))
    return {"ok": True, **values}


@register("tag_conversation")
async def tag_conversation(ctx: HandlerContext) -> dict[str, Any]:
    """Label the conversation (``args: {tags: [a, b]}`` or ``{tag: a}``) and tag the customer when ``customer: true``."""
    raw = ctx.args.get("tags") or ctx.args.get("tag") or []
    tags = tuple(str(t).strip().lower() for t in ([raw] if isinstance(raw, str) else raw) if str(t).strip())
    if not tags:
        raise HandlerError("tag_conversation needs args {tags: [...]}")
    ctx.effects.append(UpdateConversation(add_labels=tags))
    if ctx.args.get("customer"):
        ctx.effects.append(UpdateCustomer(add_tags=tags))
    return {"ok": True, "tags": list(tags)}
