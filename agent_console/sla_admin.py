"""SLA policies page at /console/admin/sla (admins): targets per priority, and a team's own where it differs.

Durations are written as people write them ("45m", "4h", "1h 30m", "2d", or plain minutes). A wrong field
re-shows the page (400) with every typed value kept and the reason beside the field; nothing is saved until
all fields are right. A saved change is audited (before and after) and takes effect at the next escalation
tick: due times of open conversations are recomputed from their episode's start (see ``agent_console.sla``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import select

from agent_console import auth, sla
from storage.models import teams

if TYPE_CHECKING:
    from agent_console.web import Console

ROLE = "admin"


class SlaAdmin:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def page(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        console = self.console
        if not auth.role_at_least(me["role"], ROLE):
            return await console.forbidden(request, me, "sla")
        async with console.rt.engine.connect() as conn:
            team_rows = [dict(r) for r in (await conn.execute(select(teams.c.id, teams.c.name)
                                                               .order_by(teams.c.name))).mappings()]
            current = await sla.load_policies(conn)
        team_ids = [t["id"] for t in team_rows]
        if request.method != "POST":
            return self.render(request, me, team_rows, sla.form_values(current, team_ids), {},
                               saved=request.query.get("saved") == "1")
        data = await console.form(request, me)
        form = sla.read_form(data, team_ids)
        if form.errors:
            return self.render(request, me, team_rows, form.values, form.errors, status=400)
        now = console.now()
        async with console.rt.engine.begin() as conn:
            await sla.save_policies(conn, form.policies)
            await auth.audit(conn, me["email"], "admin.sla.update", now, ip=console.ip(request),
                             object_type="sla_policies", before=sla.as_dict(current), after=sla.as_dict(form.policies))
        escalation = console.rt.services.get("escalation")
        if escalation is not None:
            escalation.nudge(rescan=True)  # apply the new targets to open conversations now
        raise web.HTTPSeeOther("/console/admin/sla?saved=1")

    def render(self, request: web.Request, me: dict[str, Any], team_rows: list[dict[str, Any]],
               values: dict[str, str], errors: dict[str, str], *, status: int = 200,
               saved: bool = False) -> web.Response:
        scopes = [("default", None), *((f"team{t['id']}", t) for t in team_rows)]
        return self.console.render(request, "sla.html", status=status, me=me, scopes=scopes, values=values,
                                   errors=errors, saved=saved, field=sla.field_name,
                                   defaults={p: sla.DEFAULT_SLA[p] for p in sla.PRIORITIES},
                                   fmt=sla.format_duration)


def install(console: Console, authed: Any) -> None:
    page = SlaAdmin(console)
    console.rt.app.router.add_route("*", "/console/admin/sla", authed(page.page))
