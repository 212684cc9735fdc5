"""/metrics (counters, DB-backed queue gauges, SLA breaches) and masked structured logs."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

import aiohttp

from bot.logs import JsonFormatter
from tests.production.helpers import seed_conversation
from tests.support import LoketServer, WebChatClient, sample, scrape, wait_for


async def test_metrics_count_messages_latency_and_queue(loket: LoketServer) -> None:
    async with WebChatClient(loket.base_url) as chat:
        await chat.say("halo")
        await chat.say("agen")  # hand over to a human: an escalation

    async def counted() -> str | None:
        text = await scrape(loket)
        n = sample(text, "loket_dispatch_latency_seconds_count", channel="webchat")
        return text if n and n >= 2 else None

    text = await wait_for(counted, what="two dispatches observed")
    assert sample(text, "loket_messages_total", channel="webchat", direction="in") == 2
    assert sample(text, "loket_messages_total", channel="webchat", direction="out") >= 2  # type: ignore[operator]
    assert sample(text, "loket_dispatch_results_total", channel="webchat", outcome="sent") >= 2  # type: ignore[operator]
    assert sample(text, "loket_escalations_total") == 1
    assert sample(text, "loket_queue_depth", queue="inbox") == 0
    assert sample(text, "loket_queue_oldest_age_seconds", queue="outbox") == 0
    assert sample(text, "loket_conversations", state="queued") == 1


async def test_sla_breaches_and_queue_age_come_from_the_database(loket: LoketServer) -> None:
    now = loket.rt.clock.now()
    await seed_conversation(loket, address="a", state="queued", first_response_due=now - timedelta(minutes=5))
    await seed_conversation(loket, address="b", state="queued", first_response_due=now + timedelta(minutes=5))
    await seed_conversation(loket, address="c", state="assigned", first_response_due=now - timedelta(minutes=5),
                            first_response_at=now - timedelta(minutes=6), resolution_due=now - timedelta(minutes=1))
    await seed_conversation(loket, address="d", state="resolved", resolution_due=now - timedelta(hours=1),
                            resolved_at=now)
    from storage.models import inbox_items

    async with loket.rt.engine.begin() as conn:
        await conn.execute(inbox_items.insert(), {
            "channel": "nowhere", "provider_message_id": "x1", "key": "nowhere:1", "payload": {}, "status": "failed",
            "attempts": 5, "received_at": now - timedelta(minutes=10)})
    text = await scrape(loket)
    assert sample(text, "loket_sla_breaches", target="first_response") == 1
    assert sample(text, "loket_sla_breaches", target="resolution") == 1
    assert sample(text, "loket_queue_depth", queue="inbox") == 0  # failed items are not waiting


def test_json_logs_mask_phones_emails_and_secrets_and_carry_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("loket.test.masking")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("sending to +62 812-3456-7890 and siti.rahma@example.co.id with token=lkt_abc123_SECRETVALUE "
                    "Authorization: Bearer-ish password=hunter2", extra={"conversation_id": 7, "message_id": 42})
        try:
            raise ValueError("customer 6281234567890 secret=topsecretvalue")
        except ValueError:
            logger.exception("failed for budi@example.com")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    for leaked in ("812-3456", "81234567", "siti.rahma", "budi@", "SECRETVALUE", "hunter2", "topsecretvalue"):
        assert leaked not in out, leaked
    first, second = [json.loads(line) for line in out.strip().splitlines()]
    assert (first["conversation_id"], first["message_id"]) == (7, 42)
    assert "@example.co.id" in first["msg"] and "90" in first["msg"]
    assert "exc" in second


async def test_api_tokens_never_reach_the_log(loket: LoketServer, caplog) -> None:  # type: ignore[no-untyped-def]
    from tests.production.helpers import bearer, token

    tok = await token(loket, "admin")
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession(headers=bearer(tok)) as s:
        async with s.post(f"{loket.base_url}/api/v1/tokens", json={"name": "n", "scopes": ["admin"]}) as r:
            new = (await r.json())["token"]
        async with s.get(f"{loket.base_url}/api/v1/conversations/0") as r:
            assert r.status == 404
    formatter = JsonFormatter()
    rendered = "\n".join(formatter.format(rec) for rec in caplog.records)
    for secret in (tok, new, tok.split("_", 2)[2], new.split("_", 2)[2]):
        assert secret not in rendered
