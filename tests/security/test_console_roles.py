"""The role matrix of every console route: signed out, agent, supervisor, admin — read from the app's router, so a
new console route fails here until its row is written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select, update

from bot.attachments import AttachmentStore
from storage.models import conversations, messages
from tests.console.helpers import Agent, make_agent, make_team
from tests.support import LoketServer, WebChatClient

ROLES = ("anonymous", "agent", "supervisor", "admin")
# Expected status per role (anonymous, agent, supervisor, admin). "mine": a conversation the agent may open,
# "theirs": one of another team (and its customer). GETs of a signed-out visitor go to the login page (303).
OK_ALL_GET = (303, 200, 200, 200)
MATRIX: dict[tuple[str, str, str], tuple[int, int, int, int]] = {
    ("GET", "/console/login", "-"): (200, 200, 200, 200),
    ("GET", "/console/static", "-"): (200, 200, 200, 200),  # the stylesheet and script, public like the login page
    ("GET", "/console", "-"): OK_ALL_GET,
    ("GET", "/console/", "-"): OK_ALL_GET,
    ("GET", "/console/api/counts", "-"): OK_ALL_GET,
    ("GET", "/console/c/{cid}", "mine"): OK_ALL_GET,
    ("GET", "/console/c/{cid}", "theirs"): (303, 403, 200, 200),
    ("POST", "/console/c/{cid}/typing", "mine"): (401, 200, 200, 200),
    ("POST", "/console/c/{cid}/typing", "theirs"): (401, 403, 200, 200),
    ("POST", "/console/c/{cid}/{action}", "mine"): (401, 303, 303, 303),
    ("POST", "/console/c/{cid}/{action}", "theirs"): (401, 403, 303, 303),
    ("GET", "/console/attachments/{sha}", "theirs"): (303, 403, 200, 200),
    ("GET", "/console/customers/{cust}", "mine"): OK_ALL_GET,
    ("GET", "/console/customers/{cust}", "theirs"): (303, 403, 200, 200),
    ("GET", "/console/customers/{cust}/export", "mine"): (303, 403, 200, 200),
    ("POST", "/console/customers/{cust}/{action}", "mine"): (401, 403, 303, 303),
    ("GET", "/console/dashboard", "-"): (303, 403, 200, 200),
    ("GET", "/console/admin/canned", "-"): (303, 403, 200, 200),
    ("POST", "/console/admin/canned", "-"): (401, 403, 303, 303),
    ("GET", "/console/kb", "-"): (303, 403, 200, 200),
    ("GET", "/console/kb/new", "-"): (303, 403, 200, 200),
    ("POST", "/console/kb/new", "-"): (401, 403, 303, 303),
    ("POST", "/console/kb/preview", "-"): (401, 403, 200, 200),
    ("GET", "/console/kb/a/{article_id}", "-"): (303, 403, 200, 200),
    ("POST", "/console/kb/a/{article_id}", "-"): (401, 403, 303, 303),
    ("GET", "/console/admin/sla", "-"): (303, 403, 403, 200),
    ("POST", "/console/admin/sla", "-"): (401, 403, 403, 303),
    ("GET", "/console/admin", "-"): (303, 403, 403, 200),
    ("POST", "/console/admin", "-"): (401, 403, 403, 303),
    ("GET", "/console/ws", "-"): (401, 101, 101, 101),
    ("POST", "/console/login", "-"): (403, 403, 403, 403),  # without the login page's CSRF cookie
    ("POST", "/console/logout", "-"): (401, 303, 303, 303),  # last: it ends the session
}
FORMS = {
    "/console/c/{cid}/{action}": ("priority", {"priority": "high"}),
    "/console/customers/{cust}/{action}": ("tags", {"tags": "vip"}),
    "/console/admin/canned": ("", {"shortcut": "halo", "body": "Halo!"}),
    "/console/admin": ("", {"kind": "label", "name": "penting"}),
    # "{role}" keeps each role's new article apart (a second create of one id is a 409 conflict)
    "/console/kb/new": ("", {"title": "Jam buka cabang {role}", "language": "id", "category": "umum",
                             "body": "Cabang buka pukul 08.00 sampai 15.00.", "action": "save"}),
    "/console/kb/a/{article_id}": ("", {"title": "Biaya kirim", "language": "id", "category": "umum",
                                        "body": "Biaya kirim dihitung dari berat paket.", "action": "save"}),
    "/console/kb/preview": ("", {"title": "Pratinjau", "body": "**Tebal** dan _miring_"}),
    "/console/admin/sla": ("", {f"default.{p}.{k}": v for p in ("low", "normal", "high", "urgent")
                                for k, v in (("fr", "30m"), ("res", "8h"))}),
}


@pytest.fixture
async def server(settings_factory: Any) -> AsyncIterator[LoketServer]:
    s = LoketServer(settings_factory())
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def console_routes(server: LoketServer) -> set[tuple[str, str]]:
    out = set()
    for route in server.rt.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/console") and route.method != "HEAD":
            for method in (["GET", "POST"] if route.method == "*" else [route.method]):
                out.add((method, path))
    return out


async def _escalated(server: LoketServer) -> tuple[int, int]:
    async with WebChatClient(server.base_url) as chat:
        await chat.say("halo")
        await chat.say("0")
    row = (await server.fetch(select(conversations.c.id, conversations.c.customer_id)
                              .order_by(conversations.c.id.desc())))[0]
    return row["id"], row["customer_id"]


async def _article(server: LoketServer) -> str:
    from agent_console.kb_editor import article_from

    fields = {"id": "biaya-kirim-matrix", "title": "Biaya kirim", "language": "id", "category": "umum", "tags": "",
              "questions": "", "answer": "", "body": "Biaya kirim dihitung dari berat.", "version": ""}
    await server.rt.services["kb"].save_article(article_from(fields, True), create=True)
    return fields["id"]


async def test_every_console_route_by_role(server: LoketServer) -> None:
    assert console_routes(server) == {(m, p) for m, p, _ in MATRIX}, "a console route without a row in MATRIX"
    support, billing = await make_team(server, "support"), await make_team(server, "billing")
    await make_agent(server, "agent@example.com", team=support)
    await make_agent(server, "sup@example.com", role="supervisor")
    await make_agent(server, "admin@example.com", role="admin")
    mine, mine_cust = await _escalated(server)
    theirs, theirs_cust = await _escalated(server)
    article = await _article(server)
    att = AttachmentStore(server.settings.data_dir).save(b"invoice", "invoice.txt", "text/plain")
    async with server.rt.engine.begin() as conn:
        await conn.execute(update(conversations).where(conversations.c.id == mine).values(team_id=support))
        await conn.execute(update(conversations).where(conversations.c.id == theirs).values(team_id=billing))
        await conn.execute(update(messages).where(messages.c.conversation_id == theirs, messages.c.direction == "in")
                           .values(attachments=[att.to_dict()]))
    ids = {"mine": {"cid": mine, "cust": mine_cust}, "theirs": {"cid": theirs, "cust": theirs_cust}}
    got: dict[tuple[str, str, str], list[int]] = {}
    for role in ROLES:
        client = Agent(server)
        try:
            if role != "anonymous":
                email = {"agent": "agent@example.com", "supervisor": "sup@example.com", "admin": "admin@example.com"}
                assert (await client.login(email[role])).status == 303
            for (method, path, which), _ in MATRIX.items():
                values = {**ids.get(which, {}), "sha": att.sha256, "article_id": article}
                action, form = FORMS.get(path, ("", {}))
                form = {k: v.replace("{role}", role) for k, v in form.items()}
                url = path.format(action=action, **values) + ("/console.css" if path == "/console/static" else "")
                if path == "/console/ws":
                    status = await _ws_status(client, url)
                elif method == "GET":
                    status, _ = await client.get(url)
                else:
                    status, _ = await client.post(url, form)
                got.setdefault((method, path, which), []).append(status)
        finally:
            await client.close()
    wrong = {k: (tuple(v), MATRIX[k]) for k, v in got.items() if tuple(v) != MATRIX[k]}
    assert wrong == {}, "(got, expected) by role " + str(ROLES)


async def _ws_status(client: Agent, url: str) -> int:
    import aiohttp

    try:
        ws = await client.session.ws_connect(client.server.base_url + url, params={"csrf": client.csrf or "x"})
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101
