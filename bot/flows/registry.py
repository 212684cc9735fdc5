"""Every loaded flow version, keyed (flow id, version), plus which version is the newest.

Files are the source of truth for new conversations; the ``flow_versions`` table keeps every version that
was ever loaded so a conversation started on version 3 still finishes on version 3 after the file moved to
version 4 and the process restarted.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.flows.loader import FlowDef, load_text
from bot.flows.models import FlowVersion, flow_versions
from storage.db import insert_ignore

log = logging.getLogger("loket.flows")


class FlowRegistry:
    def __init__(self) -> None:
        self._versions: dict[tuple[str, int], FlowDef] = {}
        self._latest: dict[str, int] = {}
        self.default_flow: str | None = None

    def add(self, flow: FlowDef, latest: bool = True) -> None:
        self._versions[flow.key] = flow
        if latest and flow.version >= self._latest.get(flow.id, 0):
            self._latest[flow.id] = flow.version

    def get(self, flow_id: str, version: int) -> FlowDef | None:
        return self._versions.get((flow_id, version))

    def latest(self, flow_id: str) -> FlowDef | None:
        v = self._latest.get(flow_id)
        return self._versions.get((flow_id, v)) if v is not None else None

    def current(self) -> list[FlowDef]:
        return [self._versions[(fid, v)] for fid, v in sorted(self._latest.items())]

    def versions(self) -> list[tuple[str, int]]:
        return sorted(self._versions)

    def default(self) -> FlowDef | None:
        if self.default_flow:
            return self.latest(self.default_flow)
        return None

    def __bool__(self) -> bool:
        return bool(self._latest)

    async def sync(self, conn: AsyncConnection, now: datetime) -> None:
        """Store the loaded versions and load older ones kept in the database."""
        stored = {(r["flow_id"], r["version"]): r for r in (await conn.execute(select(flow_versions))).mappings()}
        for flow in self.current():
            row = stored.get(flow.key)
            if row is None:
                await conn.execute(insert_ignore(conn, flow_versions).values(
                    flow_id=flow.id, version=flow.version, source=flow.source, checksum=flow.checksum,
                    path=flow.path[-500:], loaded_at=now))
            elif row["checksum"] != flow.checksum:
                log.warning(
                    "flow %s version %s changed on disk without a new version number; conversations in progress "
                    "on it will see the edited flow. Bump `version:` in %s when you change a flow.",
                    flow.id, flow.version, flow.path)
                await conn.execute(update(FlowVersion).where(FlowVersion.id == row["id"]).values(
                    source=flow.source, checksum=flow.checksum, path=flow.path[-500:], loaded_at=now))
        for key, row in stored.items():
            if key in self._versions:
                continue
            old, errors = load_text(row["source"], f"flow_versions:{key[0]}@{key[1]}")
            if old is None:
                log.error("stored flow %s version %s no longer loads: %s", key[0], key[1], errors[0])
                continue
            # kept for conversations in progress only: new conversations start on the files' versions
            self.add(old, latest=False)

    async def fetch(self, conn: AsyncConnection, flow_id: str, version: int) -> FlowDef | None:
        """A version this process did not load (another process stored it after we started)."""
        found = self.get(flow_id, version)
        if found is not None:
            return found
        source = (await conn.execute(select(flow_versions.c.source).where(
            flow_versions.c.flow_id == flow_id, flow_versions.c.version == version))).scalar_one_or_none()
        if source is None:
            return None
        flow, _ = load_text(source, f"flow_versions:{flow_id}@{version}")
        if flow is not None:
            self.add(flow, latest=False)
        return flow
