"""Console test helpers: agents straight in the database, a signed-in HTTP client."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from sqlalchemy import insert

from agent_console.auth import hash_password
from storage.models import agents, team_members, teams
from tests.support import LoketServer

PASSWORD = "correct horse battery"


async def make_agent(server: LoketServer, email: str, role: str = "agent", *, max_chats: int = 5,
                     team: int | None = None, totp: str | None = None, name: str | None = None) -> int:
    async with server.rt.engine.begin() as conn:
        aid = (await conn.execute(insert(agents).values(
            email=email, name=name or email.split("@")[0].title(), password_hash=hash_password(PASSWORD), role=role,
            max_chats=max_chats, presence="offline", totp_secret=totp, language="en", active=True,
            created_at=server.rt.clock.now()).returning(agents.c.id))).scalar_one()
        if team is not None:
            await conn.execute(insert(team_members).values(team_id=team, agent_id=aid))
    return int(aid)


async def make_team(server: LoketServer, name: str, hours: dict[str, Any] | None = None) -> int:
    async with server.rt.engine.begin() as conn:
        return int((await conn.execute(insert(teams).values(
            name=name, business_hours=hours or {}, settings={}, created_at=server.rt.clock.now())
            .returning(teams.c.id))).scalar_one())


class Agent:
    """An HTTP client signed in to the console."""

    def __init__(self, server: LoketServer) -> None:
        self.server = server
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def login(self, email: str, password: str = PASSWORD, totp: str = "") -> aiohttp.ClientResponse:
        base = self.server.base_url
        async with self.session.get(base + "/console/login") as resp:
            html = await resp.text()
        pre = re.search(r'name="_csrf" value="([^"]+)"', html)
        assert pre
        resp = await self.session.post(base + "/console/login", allow_redirects=False,
                                       data={"_csrf": pre.group(1), "email": email, "password": password,
                                             "totp": totp})
        if resp.status == 303:
            async with self.session.get(base + "/console") as page:
                m = re.search(r'data-csrf="([^"]+)"', await page.text())
                assert m
                self.csrf = m.group(1)
        return resp

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.server.base_url + path, allow_redirects=False) as resp:
            return resp.status, await resp.text()

    async def post(self, path: str, data: dict[str, Any], csrf: bool = True) -> tuple[int, str]:
        body = {**data, **({"_csrf": self.csrf} if csrf else {})}
        async with self.session.post(self.server.base_url + path, data=body, allow_redirects=False) as resp:
            return resp.status, await resp.text()

    async def ws(self) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(self.server.base_url + "/console/ws", params={"csrf": self.csrf})

    async def close(self) -> None:
        await self.session.close()
