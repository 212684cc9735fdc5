"""REST API /api/v1: scopes, errors, conversations, messages, customers, articles, agents, tokens, OpenAPI."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from openapi_spec_validator import validate
from sqlalchemy import select

from bot.api.auth import hash_secret
from bot.api.models import api_tokens
from bot.api.web import ROUTES
from storage.models import agents, audit_log, conversations, messages, outbox_items, touchpoints
from tests.production.helpers import bearer, seed_conversation, token
from tests.support import LoketServer


async def test_openapi_document_is_valid_and_matches_routes(loket: LoketServer) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{loket.base_url}/api/v1/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    # every /api/v1 route the app serves — the core's and the features' (appointments) — is documented, with its scope
    served = {(r.method, r.resource.canonical): r.handler for r in loket.rt.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/v1/") and r.method != "HEAD"
              and r.resource.canonical != "/api/v1/openapi.json"}
    assert documented == set(served)
    assert {(m, p) for m, p, _ in ROUTES} <= documented
    assert ("POST", "/api/v1/appointments") in documented
    for (method, path), handler in served.items():
        op = doc["paths"][path][method.lower()]
        assert op["x-required-scope"] == handler.required_scope, (method, path)


async def test_missing_bad_and_underscoped_tokens(loket: LoketServer) -> None:
    tok = await token(loket, "customers:read")
    url = f"{loket.base_url}/api/v1/conversations"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "unauthorized"
        async with s.get(url, headers=bearer(tok[:-2] + "xx")) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "invalid_token"
        async with s.get(url, headers=bearer(tok)) as r:
            assert r.status == 403
            body = await r.json()
            assert body == {"error": {"code": "forbidden", "message": "this token lacks the scope 'conversations:read'"}}
        async with s.get(f"{loket.base_url}/api/v1/customers", headers=bearer(tok)) as r:
            assert r.status == 200


async def test_token_is_hashed_at_rest_and_revocable(loket: LoketServer) -> None:
    admin = await token(loket, "admin", name="root")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{loket.base_url}/api/v1/tokens", headers=bearer(admin),
                          json={"name": "crm", "scopes": ["customers:read"]}) as r:
            assert r.status == 201
            created = await r.json()
        plain = created["token"]
        assert re.fullmatch(r"lkt_[0-9a-f]{12}_[A-Za-z0-9_-]{40,}", plain)
        rows = await loket.fetch(select(api_tokens).where(api_tokens.c.id == created["id"]))
        assert plain.split("_", 2)[2] not in str(rows)
        assert rows[0]["secret_hash"] == hash_secret(plain.split("_", 2)[2])
        async with s.get(f"{loket.base_url}/api/v1/customers", headers=bearer(plain)) as r:
            assert r.status == 200
        async with s.delete(f"{loket.base_url}/api/v1/tokens/{created['id']}", headers=bearer(admin)) as r:
            assert r.status == 204
        async with s.get(f"{loket.base_url}/api/v1/customers", headers=bearer(plain)) as r:
            assert r.status == 401
        async with s.post(f"{loket.base_url}/api/v1/tokens", headers=bearer(admin),
                          json={"name": "x", "scopes": ["root"]}) as r:
            assert r.status == 422
            assert "unknown scope" in (await r.json())["error"]["message"]
    actions = [r["action"] for r in await loket.fetch(select(audit_log).order_by(audit_log.c.id))]
    assert actions == ["token.create", "token.revoke"]


async def test_brute_force_is_throttled_per_ip(settings_factory) -> None:  # type: ignore[no-untyped-def]
    server = LoketServer(settings_factory(LOKET_API_MAX_FAILURES="5"))
    await server.start()
    try:
        good = await token(server, "customers:read")
        url = f"{server.base_url}/api/v1/customers"
        async with aiohttp.ClientSession() as s:
            codes = []
            for i in range(8):
                async with s.get(url, headers=bearer(f"lkt_{i:012x}_guess{i}")) as r:
                    codes.append(r.status)
            assert codes == [401] * 5 + [429] * 3
            async with s.get(url, headers=bearer(good)) as r:  # even a good token waits out the window
                assert r.status == 429
                assert r.headers["Retry-After"] == "60"
    finally:
        await server.stop()


async def test_conversations_list_filter_get_and_patch(loket: LoketServer) -> None:
    a = await seed_conversation(loket, address="v-a")
    b = await seed_conversation(loket, address="v-b", state="queued")
    now = loket.rt.clock.now()
    async with loket.rt.engine.begin() as conn:
        agent_id = (await conn.execute(agents.insert().returning(agents.c.id), {
            "email": "ani@example.com", "name": "Ani", "password_hash": "x", "role": "agent", "max_chats": 5,
            # offline: the escalation loop must not auto-assign the queued conversation before the API does
            "presence": "offline", "language": "id", "active": True, "created_at": now})).scalar_one()
    tok = await token(loket, "conversations:read", "conversations:write")
    base = f"{loket.base_url}/api/v1/conversations"
    async with aiohttp.ClientSession(headers=bearer(tok)) as s:
        async with s.get(base, params={"state": "queued"}) as r:
            assert [c["id"] for c in (await r.json())["data"]] == [b["conversation_id"]]
        async with s.get(base, params={"state": "nonsense"}) as r:
            assert r.status == 422
        async with s.get(base, params={"limit": "abc"}) as r:
            assert r.status == 422
            assert (await r.json())["error"]["code"] == "invalid_parameter"
        async with s.get(f"{base}/{a['conversation_id']}") as r:
            assert (await r.json())["state"] == "bot"
        async with s.get(f"{base}/999999") as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "not_found"
        async with s.patch(f"{base}/{b['conversation_id']}", json={"assignee_id": agent_id, "priority": "high",
                                                                    "add_labels": ["vip"]}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
            assert (body["assignee_id"], body["state"], body["priority"], body["labels"]) == (
                agent_id, "assigned", "high", ["vip"])
        async with s.patch(f"{base}/{b['conversation_id']}", json={"state": "resolved"}) as r:
            assert (await r.json())["state"] == "resolved"
        async with s.patch(f"{base}/{b['conversation_id']}", json={"state": "closed"}) as r:
            assert r.status == 422
        async with s.patch(f"{base}/{b['conversation_id']}", data="not json") as r:
            assert r.status == 422
            assert (await r.json())["error"]["code"] == "invalid_json"
    kinds = [t["kind"] for t in await loket.fetch(
        select(touchpoints).where(touchpoints.c.conversation_id == b["conversation_id"]).order_by(touchpoints.c.id))]
    assert kinds == ["assigned", "state_changed", "priority_changed", "state_changed"]
    audit = await loket.fetch(select(audit_log).order_by(audit_log.c.id))
    assert [x["action"] for x in audit] == ["conversation.update", "conversation.update"]
    assert audit[0]["actor"].startswith("api:test#") and audit[0]["object_id"] == str(b["conversation_id"])


async def test_send_message_as_agent_and_bot_and_list(loket: LoketServer) -> None:
    c = await seed_conversation(loket)
    now = loket.rt.clock.now()
    async with loket.rt.engine.begin() as conn:
        agent_id = (await conn.execute(agents.insert().returning(agents.c.id), {
            "email": "budi@example.com", "name": "Budi", "password_hash": "x", "role": "agent", "max_chats": 5,
            "presence": "online", "language": "id", "active": True, "created_at": now})).scalar_one()
    tok = await token(loket, "messages:read", "messages:write")
    url = f"{loket.base_url}/api/v1/conversations/{c['conversation_id']}/messages"
    async with aiohttp.ClientSession(headers=bearer(tok)) as s:
        async with s.post(url, json={"text": "Halo, saya Budi", "agent_id": agent_id}) as r:
            assert r.status == 201, await r.text()
            sent = (await r.json())["data"][0]
            assert (sent["author"], sent["agent_id"], sent["status"]) == ("agent", agent_id, "queued")
        async with s.post(url, json={"text": "Pilih", "author": "bot",
                                     "choices": [{"label": "Ya", "value": "yes"}]}) as r:
            assert r.status == 201
        async with s.post(url, json={"text": "no agent"}) as r:
            assert r.status == 422
        async with s.post(url, json={"text": ""}) as r:
            assert r.status == 422
        async with s.get(url) as r:
            data = (await r.json())["data"]
            assert [m["body"] for m in data] == ["Halo, saya Budi", "Pilih"]
            assert data[1]["choices"] == [{"label": "Ya", "value": "yes"}]
    out = await loket.fetch(select(outbox_items))
    assert len(out) == 2
    assert [a["action"] for a in await loket.fetch(select(audit_log))] == ["message.send", "message.send"]


async def test_send_rejected_by_channel_is_422_with_reason(settings_factory) -> None:  # type: ignore[no-untyped-def]
    server = LoketServer(settings_factory(TWILIO_ACCOUNT_SID="AC" + "0" * 32, TWILIO_AUTH_TOKEN="t" * 32,
                                          TWILIO_WHATSAPP_FROM="whatsapp:+14155238886",
                                          TWILIO_API_BASE="http://127.0.0.1:9"))
    await server.start()
    try:
        old = datetime(2020, 1, 1, tzinfo=UTC)
        c = await seed_conversation(server, channel="whatsapp", address="+6281234567890", last_inbound_at=old)
        tok = await token(server, "messages:write")
        url = f"{server.base_url}/api/v1/conversations/{c['conversation_id']}/messages"
        async with aiohttp.ClientSession(headers=bearer(tok)) as s, s.post(
                url, json={"text": "halo", "author": "bot"}) as r:
            assert r.status == 422
            body = await r.json()
            assert body["error"]["code"] == "window_closed"
            assert "24" in body["error"]["message"]
        assert await server.fetch(select(messages)) == []
    finally:
        await server.stop()


async def test_customers_timeline_and_patch(loket: LoketServer) -> None:
    c = await seed_conversation(loket, address="v-tl")
    tok = await token(loket, "customers:read", "customers:write", "messages:write")
    base = f"{loket.base_url}/api/v1/customers"
    async with aiohttp.ClientSession(headers=bearer(tok)) as s:
        async with s.post(f"{loket.base_url}/api/v1/conversations/{c['conversation_id']}/messages",
                          json={"text": "hai", "author": "bot"}) as r:
            assert r.status == 201
        async with s.get(base, params={"q": "v-tl"}) as r:
            assert [x["id"] for x in (await r.json())["data"]] == [c["customer_id"]]
        async with s.get(f"{base}/{c['customer_id']}") as r:
            assert (await r.json())["identities"][0]["address"] == "v-tl"
        async with s.patch(f"{base}/{c['customer_id']}", json={"tags": ["vip"], "language": "en",
                                                                "attributes": {"plan": "gold"}}) as r:
            body = await r.json()
            assert (body["tags"], body["language"], body["attributes"]) == (["vip"], "en", {"plan": "gold"})
        async with s.get(f"{base}/{c['customer_id']}/timeline") as r:
            kinds = [t["kind"] for t in (await r.json())["data"]]
            assert [k for k in kinds if k != "delivery"] == ["message_out", "customer_updated"]
        async with s.get(f"{base}/424242/timeline") as r:
            assert r.status == 404


async def test_articles_and_agents(loket: LoketServer) -> None:
    from storage.models import Base

    kb = Base.metadata.tables["kb_articles"]
    now = loket.rt.clock.now()
    async with loket.rt.engine.begin() as conn:
        await conn.execute(kb.insert(), {"external_id": "jam-buka", "title": "Jam buka", "body": "08.00–17.00",
                                         "answer": "Kami buka 08.00", "category": "umum", "language": "id",
                                         "tags": [], "questions": ["jam buka?"], "published": True, "version": 1,
                                         "content_hash": "", "views": 0, "helpful": 0, "unhelpful": 0,
                                         "created_at": now, "updated_at": now})
    tok = await token(loket, "articles:read", "agents:read")
    async with aiohttp.ClientSession(headers=bearer(tok)) as s:
        async with s.get(f"{loket.base_url}/api/v1/articles", params={"q": "buka"}) as r:
            data = (await r.json())["data"]
            assert [a["external_id"] for a in data] == ["jam-buka"]
        async with s.get(f"{loket.base_url}/api/v1/articles/{data[0]['id']}") as r:
            assert (await r.json())["questions"] == ["jam buka?"]
        async with s.get(f"{loket.base_url}/api/v1/agents") as r:
            assert (await r.json())["data"] == []


async def test_tokens_cli_create_list_revoke(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import os
    import sys

    env = {**os.environ, "DATABASE_URL": db_url, "LOKET_DATA_DIR": str(tmp_path), "LOKET_SECRET_KEY": "k" * 40,
           "LOKET_LOG_FORMAT": "plain", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot.cli", "tokens", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    code, out = await cli("create", "--name", "crm", "--scopes", "customers:read,conversations:read")
    assert code == 0, out
    plain = out.strip().splitlines()[-1]
    assert plain.startswith("lkt_")
    code, out = await cli("list")
    assert "crm" in out and plain.split("_", 2)[2] not in out
    code, out = await cli("create", "--name", "bad", "--scopes", "everything")
    assert code == 2 and "unknown scope" in out
    code, out = await cli("revoke", "1")
    assert code == 0 and "revoked" in out
    code, out = await cli("revoke", "1")
    assert code == 1


async def test_resolving_through_the_api_ends_the_sla_episode_and_counts_a_late_one(loket: LoketServer) -> None:
    now = loket.rt.clock.now()
    start = now - timedelta(days=2)
    c = await seed_conversation(loket, address="v-late", state="assigned", queued_at=start,
                                first_response_at=start + timedelta(minutes=5),
                                first_response_due=start + timedelta(hours=1),
                                resolution_due=start + timedelta(days=1), meta={"sla": {"start": start.isoformat()}})
    tok = await token(loket, "conversations:write")
    async with aiohttp.ClientSession(headers=bearer(tok)) as s, s.patch(
            f"{loket.base_url}/api/v1/conversations/{c['conversation_id']}", json={"state": "resolved"}) as r:
        assert r.status == 200, await r.text()
    breaches = await loket.fetch(select(touchpoints).where(touchpoints.c.kind == "sla_breached"))
    assert [b["conversation_id"] for b in breaches] == [c["conversation_id"]]  # a day past its target: once
    row = (await loket.fetch(select(conversations).where(conversations.c.id == c["conversation_id"])))[0]
    assert row["state"] == "resolved" and row["meta"]["sla"]["ended"] and not row["meta"].get("sla_breached")
