"""SLA policies: first-response and resolution targets per priority, optionally per team, and the due times.

Targets come from ``console_sla_policies`` (one row per priority; a missing row falls back to
``DEFAULT_SLA``) and ``console_sla_team_policies`` (a team's own targets for some priorities; the others
inherit the default). An admin edits both at ``/console/admin/sla``.

The clock of an SLA *episode* starts when the conversation is first queued for a person and keeps running
through transfers; it ends when the conversation is resolved or handed back to the bot (the next escalation
starts a new episode; a queueing that is not a transfer after the episode's start also does, whoever resolved
the conversation in between). The episode lives in ``meta["sla"]`` (``start``, ``ended``). Due times are
``start + target`` for the conversation's current priority and team, so raising the priority or editing a
policy moves the due times of open conversations at the next escalation tick.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_console.models import sla_policies, sla_team_policies
from bot.clock import aware

PRIORITIES = ["low", "normal", "high", "urgent"]
# (first response, resolution) in minutes
DEFAULT_SLA: dict[str, tuple[int, int]] = {"urgent": (15, 240), "high": (30, 480), "normal": (60, 1440),
                                           "low": (240, 2880)}
MAX_MINUTES = 90 * 24 * 60  # 90 days
_PART = re.compile(r"(\d+)\s*([dhm])")
_UNITS = {"d": 1440, "h": 60, "m": 1}


@dataclass(frozen=True)
class SlaPolicies:
    default: dict[str, tuple[int, int]] = field(default_factory=dict)
    teams: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)

    def minutes(self, priority: str, team_id: int | None = None) -> tuple[int, int]:
        if team_id is not None and priority in self.teams.get(team_id, {}):
            return self.teams[team_id][priority]
        return self.default.get(priority) or DEFAULT_SLA.get(priority, DEFAULT_SLA["normal"])

    def targets(self, priority: str, team_id: int | None = None) -> tuple[timedelta, timedelta]:
        fr, res = self.minutes(priority, team_id)
        return timedelta(minutes=fr), timedelta(minutes=res)


async def load_policies(conn: AsyncConnection) -> SlaPolicies:
    default = {r["priority"]: (r["first_response_minutes"], r["resolution_minutes"])
               for r in (await conn.execute(select(sla_policies))).mappings()}
    teams: dict[int, dict[str, tuple[int, int]]] = {}
    for r in (await conn.execute(select(sla_team_policies))).mappings():
        teams.setdefault(r["team_id"], {})[r["priority"]] = (r["first_response_minutes"], r["resolution_minutes"])
    return SlaPolicies(default, teams)


async def save_policies(conn: AsyncConnection, policies: SlaPolicies) -> None:
    """Replace every stored target with ``policies`` (one transaction: the caller's)."""
    await conn.execute(delete(sla_policies))
    await conn.execute(delete(sla_team_policies))
    for prio, (fr, res) in policies.default.items():
        await conn.execute(insert(sla_policies).values(priority=prio, first_response_minutes=fr,
                                                       resolution_minutes=res, meta={}))
    for team_id, rows in policies.teams.items():
        for prio, (fr, res) in rows.items():
            await conn.execute(insert(sla_team_policies).values(team_id=team_id, priority=prio,
                                                                first_response_minutes=fr, resolution_minutes=res))


# ------------------------------------------------------------------ durations as people write them
class DurationError(ValueError):
    pass


def parse_duration(text: str) -> int:
    """Minutes from "90", "45m", "4h", "1h 30m", "2d" (also "1j 30m": jam = hour, "2h" = hari is *not* read)."""
    raw = text.strip().lower().replace("jam", "h").replace("menit", "m").replace("hari", "d")
    if not raw:
        raise DurationError("empty")
    if raw.isdigit():
        minutes = int(raw)
    else:
        compact = raw.replace(" ", "")
        parts = _PART.findall(compact)
        if not parts or "".join(n + u for n, u in parts) != compact:
            raise DurationError(f"{text.strip()!r} is not a duration")
        minutes = sum(int(n) * _UNITS[u] for n, u in parts)
    if minutes <= 0:
        raise DurationError("must be more than 0 minutes")
    if minutes > MAX_MINUTES:
        raise DurationError("must be at most 90 days")
    return minutes


def format_duration(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{mins}m" if mins else ""]
    return " ".join(p for p in parts if p) or "0m"


@dataclass
class PolicyForm:
    """The admin form read back: the policies, or per-field errors (the typed text is kept for the page)."""

    policies: SlaPolicies
    errors: dict[str, str]
    values: dict[str, str]


def field_name(scope: str, priority: str, kind: str) -> str:
    return f"{scope}.{priority}.{kind}"


def read_form(data: Any, team_ids: list[int]) -> PolicyForm:
    """``default.<priority>.fr|res`` are required; ``team<id>.<priority>.fr|res`` are optional pairs."""
    errors: dict[str, str] = {}
    values: dict[str, str] = {}
    default: dict[str, tuple[int, int]] = {}
    teams: dict[int, dict[str, tuple[int, int]]] = {}
    for scope, tid in [("default", None), *((f"team{t}", t) for t in team_ids)]:
        for prio in PRIORITIES:
            got: dict[str, int] = {}
            texts = {}
            for kind in ("fr", "res"):
                name = field_name(scope, prio, kind)
                texts[kind] = values[name] = str(data.get(name) or "").strip()
            if tid is not None and not texts["fr"] and not texts["res"]:
                continue  # the team inherits the default for this priority
            for kind in ("fr", "res"):
                name = field_name(scope, prio, kind)
                try:
                    got[kind] = parse_duration(texts[kind])
                except DurationError as exc:
                    errors[name] = str(exc)
            if len(got) == 2 and got["fr"] > got["res"]:
                errors[field_name(scope, prio, "fr")] = "first response must not be later than resolution"
            if len(got) == 2 and field_name(scope, prio, "fr") not in errors:
                if tid is None:
                    default[prio] = (got["fr"], got["res"])
                else:
                    teams.setdefault(tid, {})[prio] = (got["fr"], got["res"])
    return PolicyForm(SlaPolicies(default, teams), errors, values)


def form_values(policies: SlaPolicies, team_ids: list[int]) -> dict[str, str]:
    out: dict[str, str] = {}
    for prio in PRIORITIES:
        fr, res = policies.minutes(prio)
        out[field_name("default", prio, "fr")], out[field_name("default", prio, "res")] = (
            format_duration(fr), format_duration(res))
        for tid in team_ids:
            own = policies.teams.get(tid, {}).get(prio)
            out[field_name(f"team{tid}", prio, "fr")] = format_duration(own[0]) if own else ""
            out[field_name(f"team{tid}", prio, "res")] = format_duration(own[1]) if own else ""
    return out


def as_dict(policies: SlaPolicies) -> dict[str, Any]:
    """For the audit log."""
    return {"default": {p: list(v) for p, v in policies.default.items()},
            "teams": {str(t): {p: list(v) for p, v in rows.items()} for t, rows in policies.teams.items()}}


# ------------------------------------------------------------------ due times (pure)
def episode(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    sla = (meta or {}).get("sla")
    return sla if isinstance(sla, dict) and sla.get("start") and not sla.get("ended") else None


def due_times(conv: dict[str, Any], policies: SlaPolicies) -> dict[str, Any]:
    """Column values that bring an open, queued-at-least-once conversation's SLA up to date ({} = nothing)."""
    queued_at = aware(conv.get("queued_at"))
    if queued_at is None:
        return {}
    meta = dict(conv.get("meta") or {})
    values: dict[str, Any] = {}
    current = episode(meta)
    if current is not None and queued_at > datetime.fromisoformat(current["start"]) and \
            (conv.get("handover") or {}).get("reason") != "transferred":
        current = None  # queued again by the bot (or the API) after the episode ended elsewhere: a new one
    if current is None:
        start = queued_at
        meta["sla"] = {"start": start.isoformat()}
        meta.pop("sla_breached", None)
        values["meta"] = meta
    else:
        start = datetime.fromisoformat(current["start"])
    answered = aware(conv.get("first_response_at"))
    if answered is not None and answered < start:
        values["first_response_at"] = None  # that answer belonged to an earlier episode
    fr, res = policies.targets(conv.get("priority") or "normal", conv.get("team_id"))
    if aware(conv.get("first_response_due")) != start + fr:
        values["first_response_due"] = start + fr
    if aware(conv.get("resolution_due")) != start + res:
        values["resolution_due"] = start + res
    return values


def ended(meta: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """The meta changes that close the current episode (resolve, hand back to the bot)."""
    current = episode(meta)
    out: dict[str, Any] = {"sla_breached": None}
    if current is not None:
        out["sla"] = {**current, "ended": now.isoformat()}
    return out


def started(now: datetime) -> dict[str, Any]:
    """The meta that starts an episode now (an agent reopens or takes a conversation the bot had)."""
    return {"sla": {"start": now.isoformat()}, "sla_breached": None}


def episode_start(sla_start: str | None, queued_at: datetime | None) -> datetime | None:
    """When the conversation's last SLA clock started (for the dashboard's response times): ``meta.sla.start``
    where the SLA loop set it, else when the conversation was queued."""
    return datetime.fromisoformat(sla_start) if sla_start else aware(queued_at)
