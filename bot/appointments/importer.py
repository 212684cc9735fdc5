"""CSV intake: ``loket appointments import FILE.csv``.

Every row is validated on its own and written in its own savepoint: a bad row is reported with its line
number and reasons and leaves nothing behind; good rows are imported. Re-importing the same
``external_id`` updates the appointment (a changed start reschedules its reminders), so a nightly export
can be imported again and again.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.appointments.service import FIELDS, AppointmentError, Policy, upsert_appointment, validate_input

CHUNK = 100  # rows per transaction (each row in its own savepoint inside it)


@dataclass
class RowError:
    line: int
    external_id: str
    reasons: list[str]


@dataclass
class ImportReport:
    total: int = 0
    created: int = 0
    updated: int = 0
    rescheduled: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)
    file_error: str | None = None

    @property
    def imported(self) -> int:
        return self.created + self.updated + self.rescheduled + self.unchanged

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "created": self.created, "updated": self.updated,
                "rescheduled": self.rescheduled, "unchanged": self.unchanged, "file_error": self.file_error,
                "errors": [{"line": e.line, "external_id": e.external_id, "reasons": e.reasons}
                           for e in self.errors]}


def check_header(header: list[str] | None) -> str | None:
    if not header:
        return "the file is empty; the first line must be the header " + ",".join(FIELDS)
    cols = [h.strip().lower() for h in header]
    missing = [f for f in FIELDS if f not in cols]
    unknown = [c for c in cols if c not in FIELDS]
    dupes = sorted({c for c in cols if cols.count(c) > 1})
    problems = []
    if missing:
        problems.append("missing columns: " + ", ".join(missing))
    if unknown:
        problems.append("unknown columns: " + ", ".join(unknown))
    if dupes:
        problems.append("repeated columns: " + ", ".join(dupes))
    if problems:
        return "; ".join(problems) + ". Expected header: " + ",".join(FIELDS)
    return None


def read_rows(text: str) -> tuple[list[str] | None, list[tuple[int, dict[str, Any], list[str]]]]:
    """(header, [(line number, row, row-shape problems)])."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return None, []
    cols = [h.strip().lower() for h in header]
    rows = []
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        problems = []
        if len(values) != len(cols):
            problems.append(f"has {len(values)} fields, the header has {len(cols)} (check quoting and commas)")
        rows.append((line, dict(zip(cols, values, strict=False)), problems))
    return header, rows


async def import_csv(engine: AsyncEngine, path: Path | str, now: datetime, policy: Policy,
                     progress: Callable[[int], None] | None = None, dry_run: bool = False) -> ImportReport:
    report = ImportReport()
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        report.file_error = f"cannot read {path}: {exc.strerror or exc}"
        return report
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        report.file_error = f"{path} is not UTF-8 text; save it as CSV UTF-8"
        return report
    header, rows = read_rows(text)
    report.file_error = check_header(header)
    if report.file_error:
        return report
    report.total = len(rows)
    seen: dict[str, int] = {}
    for i in range(0, len(rows), CHUNK):
        chunk = rows[i:i + CHUNK]
        async with engine.begin() as conn:
            for line, row, problems in chunk:
                ext = str(row.get("external_id") or "").strip()
                inp, errors = validate_input(row, now)
                errors = problems + errors
                if ext and ext in seen:
                    errors.append(f"external_id {ext!r} is repeated (first on line {seen[ext]})")
                if errors or inp is None:
                    report.errors.append(RowError(line, ext, errors))
                    continue
                seen[ext] = line
                try:
                    async with conn.begin_nested():
                        _, outcome = await upsert_appointment(conn, inp, now, policy, source="import")
                except AppointmentError as exc:
                    report.errors.append(RowError(line, ext, [str(exc)]))
                    continue
                except Exception as exc:  # noqa: BLE001 - a database error on one row must not stop the file
                    report.errors.append(RowError(line, ext, [f"could not be saved: {type(exc).__name__}: {exc}"]))
                    continue
                setattr(report, outcome, getattr(report, outcome) + 1)
            if dry_run:
                await conn.rollback()
        if progress:
            progress(len(chunk))
    return report
