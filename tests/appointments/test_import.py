"""CSV intake: per-row validation with line numbers, nothing half-imported, idempotent re-import."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bot.appointments.importer import import_csv
from bot.appointments.models import appointments_t, reminders_t
from bot.clock import aware
from storage.models import customers, identities
from tests.appointments.helpers import T0, csv_text, import_rows, reminders, row, start


async def test_good_rows_imported_bad_rows_reported_with_reasons(settings_factory: Any, tmp_path: Path) -> None:
    loket, _ = await start(settings_factory)
    try:
        rows = [
            row("A1", phone="0812-3456-7890", email="Budi@Example.COM", telegram_chat_id="5551234"),
            row("A2", name="Made", phone="+6281311112222", start="2026-11-26 09:00", timezone="WITA"),
            row("B1", phone="0812345678901", start="2026-02-30 10:00"),  # impossible date (line 4)
            row("B2", phone="0812345678902", timezone="Asia/Atlantis"),  # unknown timezone
            row("B3", phone="12345"),  # does not parse as a phone number
            row("B4", phone="0812345678903", start="2026-11-20 10:00"),  # in the past
            row("B5", phone="0812345678904", channel="fax"),
            row("A2", phone="0812345678905"),  # repeated external id
            row("A3", name="Yohana", email="yohana@example.com", timezone="Asia/Jayapura", channel="email",
                language="en"),
        ]
        report = await import_rows(loket, tmp_path, rows)
        assert (report.total, report.created, len(report.errors)) == (9, 3, 6)
        by_line = {e.line: " ".join(e.reasons) for e in report.errors}
        assert "not a real date" in by_line[4]
        assert "unknown timezone 'Asia/Atlantis'" in by_line[5]
        assert "not a valid phone number" in by_line[6]
        assert "in the past" in by_line[7]
        assert "channel 'fax'" in by_line[8]
        assert "repeated (first on line 3)" in by_line[9]
        appts = await loket.fetch(select(appointments_t).order_by(appointments_t.c.external_id))
        assert [a["external_id"] for a in appts] == ["A1", "A2", "A3"]
        # nothing of a bad row: no customer was created for its phone number
        bad_phones = [f"+62812345678{i}" for i in range(1, 6)]
        bad = await loket.fetch(select(identities).where(identities.c.address.in_(bad_phones)))
        assert bad == []
        # local time in the row's zone, stored as UTC
        a2 = next(a for a in appts if a["external_id"] == "A2")
        assert aware(a2["start_at"]) == datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
        assert a2["timezone"] == "Asia/Makassar"
        # one customer for the person's phone, email and Telegram chat
        a1 = next(a for a in appts if a["external_id"] == "A1")
        ids = await loket.fetch(select(identities).where(identities.c.customer_id == a1["customer_id"]))
        assert {(i["channel"], i["address"]) for i in ids} == {
            ("whatsapp", "+6281234567890"), ("email", "budi@example.com"), ("telegram", "5551234")}
        # default stages 24h and 2h, one row each
        rems = await reminders(loket, "A1")
        assert set(rems) == {"24h", "2h"}
        assert aware(rems["24h"]["due_at"]) == datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
        assert {r["status"] for r in rems.values()} == {"pending"}
    finally:
        await loket.stop()


async def test_wrong_columns_import_nothing(settings_factory: Any, tmp_path: Path) -> None:
    loket, _ = await start(settings_factory)
    try:
        path = tmp_path / "bad.csv"
        fields = ["external_id", "nama", "phone", "email", "service", "provider", "location", "start", "timezone",
                  "channel", "language"]
        path.write_text(csv_text([row("X1", phone="081234567890") | {"nama": "Budi"}], fields))
        report = await import_csv(loket.rt.engine, path, T0, loket.rt.services["appointments_policy"])
        assert report.file_error is not None
        assert "missing columns: name, telegram_chat_id" in report.file_error
        assert "unknown columns: nama" in report.file_error
        assert await loket.scalar(select(func.count()).select_from(appointments_t)) == 0
    finally:
        await loket.stop()


async def test_reimport_is_idempotent_and_a_moved_start_reschedules(settings_factory: Any, tmp_path: Path) -> None:
    loket, _ = await start(settings_factory)
    try:
        rows = [row("R1", phone="081234567890"), row("R2", phone="081298765432", name="Siti")]
        first = await import_rows(loket, tmp_path, rows)
        assert first.created == 2
        again = await import_rows(loket, tmp_path, rows)
        assert (again.created, again.unchanged, again.errors) == (0, 2, [])
        n_cust = await loket.scalar(select(func.count()).select_from(customers))
        assert n_cust == 2
        rows[0]["start"] = "2026-11-27 14:00"
        rows[1]["location"] = "Ruang 2"
        moved = await import_rows(loket, tmp_path, rows)
        assert (moved.rescheduled, moved.updated) == (1, 1)
        rems = await reminders(loket, "R1")
        assert aware(rems["2h"]["due_at"]) == datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
        assert await loket.scalar(select(func.count()).select_from(reminders_t)) == 4
        r1 = await loket.fetch(select(appointments_t).where(appointments_t.c.external_id == "R1"))
        assert r1[0]["status"] == "rescheduled"
        assert await loket.scalar(select(func.count()).select_from(customers)) == 2
    finally:
        await loket.stop()


async def test_stage_already_past_is_skipped_not_sent_late(settings_factory: Any, tmp_path: Path) -> None:
    loket, _ = await start(settings_factory)
    try:
        # 10 hours ahead: the 24h stage is already past
        local = (T0 + timedelta(hours=10)).astimezone().astimezone(UTC) + timedelta(hours=7)
        report = await import_rows(loket, tmp_path, [row("S1", phone="081234567890",
                                                          start=local.strftime("%Y-%m-%d %H:%M"))])
        assert report.created == 1
        rems = await reminders(loket, "S1")
        assert rems["24h"]["status"] == "skipped"
        assert "past" in rems["24h"]["reason"]
        assert rems["2h"]["status"] == "pending"
    finally:
        await loket.stop()


def test_cli_import_prints_progress_and_report(db_url: str, tmp_path: Path) -> None:
    future = datetime.now(UTC) + timedelta(days=3)
    path = tmp_path / "in.csv"
    path.write_text(csv_text([
        row("C1", phone="081234567890", start=(future + timedelta(hours=7)).strftime("%Y-%m-%d %H:%M")),
        row("C2", phone="081234567891", start="2025-13-01 10:00"),
    ]))
    env = {**os.environ, "DATABASE_URL": db_url, "LOKET_DATA_DIR": str(tmp_path / "data"),
           "LOKET_SECRET_KEY": "x" * 40, "COLUMNS": "160"}
    out = subprocess.run([sys.executable, "-m", "bot.cli", "appointments", "import", str(path)], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2 rows: 1 created" in out.stdout
    assert "1 rejected" in out.stdout
    assert "not a real date" in out.stdout
