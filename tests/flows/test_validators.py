"""Answer validators: dates and times in Indonesian and English, phone numbers, numbers, email, text, regex."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.flows.validators import Invalid, Valid, match_option, parse_when, validate

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # Monday 15:00 in Jakarta


@pytest.mark.parametrize(("text", "expected"), [
    ("besok jam 3 sore", "2026-11-24T15:00:00+07:00"),
    ("besok jam 10 pagi", "2026-11-24T10:00:00+07:00"),
    ("lusa jam 9", "2026-11-25T09:00:00+07:00"),
    ("jam 1 siang besok", "2026-11-24T13:00:00+07:00"),
    ("senin depan jam 10", "2026-11-30T10:00:00+07:00"),
    ("rabu jam 19.00", "2026-11-25T19:00:00+07:00"),
    ("tanggal 25 jam 10", "2026-11-25T10:00:00+07:00"),
    ("25/11/2026 14.30", "2026-11-25T14:30:00+07:00"),
    ("jam 4 sore", "2026-11-23T16:00:00+07:00"),
    ("jam 9 malam", "2026-11-23T21:00:00+07:00"),
    ("tomorrow 3pm", "2026-11-24T15:00:00+07:00"),
    ("tomorrow at 10am", "2026-11-24T10:00:00+07:00"),
    ("next monday 10am", "2026-11-30T10:00:00+07:00"),
    ("25 November 2026 14:00", "2026-11-25T14:00:00+07:00"),
])
def test_datetimes_in_indonesian_and_english(text: str, expected: str) -> None:
    result = parse_when(text, "datetime", NOW)
    assert isinstance(result, Valid), result
    assert result.value == expected


def test_datetime_in_the_customers_timezone() -> None:
    # 15:00 in Jakarta is 17:00 in Jayapura: 16:00 has passed there, so "jam 4 sore" means tomorrow
    result = parse_when("jam 4 sore", "datetime", NOW, tz="Asia/Jayapura")
    assert isinstance(result, Valid)
    assert result.value == "2026-11-24T16:00:00+09:00"


@pytest.mark.parametrize(("text", "reason"), [
    ("kemarin jam 3", "in_past"),
    ("besok", "need_time"),
    ("kapan saja", "not_a_date"),
    ("jam 27", "bad_time"),
])
def test_bad_datetimes_explain_why(text: str, reason: str) -> None:
    assert parse_when(text, "datetime", NOW) == Invalid(reason)


def test_dates_and_times() -> None:
    assert parse_when("besok", "date", NOW) == Valid("2026-11-24", "24-11-2026")
    assert parse_when("25 desember", "date", NOW).value == "2026-12-25"  # type: ignore[union-attr]
    assert parse_when("jam 3 sore", "time", NOW) == Valid("15:00", "15:00")
    assert parse_when("7.30 pagi", "time", NOW) == Valid("07:30", "07:30")


@pytest.mark.parametrize(("text", "e164"), [
    ("0812-3456-7890", "+6281234567890"),
    ("+62 812 3456 7890", "+6281234567890"),
    ("6281234567890", "+6281234567890"),
    ("(021) 5790 1234", "+622157901234"),
])
def test_phone_numbers_default_to_indonesia(text: str, e164: str) -> None:
    result = validate(text, {"type": "phone"}, NOW)
    assert isinstance(result, Valid) and result.value == e164


def test_bad_phone_numbers_and_other_regions() -> None:
    assert validate("12345", {"type": "phone"}, NOW) == Invalid("not_a_phone")
    assert validate("call me", {"type": "phone"}, NOW) == Invalid("not_a_phone")
    assert validate("9123 4567", {"type": "phone", "region": "SG"}, NOW).value == "+6591234567"  # type: ignore[union-attr]


def test_number_ranges() -> None:
    spec = {"type": "number", "min": 1, "max": 10}
    assert validate("7", spec, NOW) == Valid(7, "7")
    assert validate("tujuh", spec, NOW) == Valid(7, "7")
    assert validate("0", spec, NOW) == Invalid("too_small")
    assert validate("11", spec, NOW) == Invalid("too_large")
    assert validate("2,5", spec, NOW) == Invalid("not_whole")
    assert validate("2,5", {**spec, "integer": False}, NOW) == Valid(2.5, "2.5")
    assert validate("banyak", spec, NOW) == Invalid("not_a_number")


def test_email_text_and_regex() -> None:
    assert validate("Budi@Contoh.CO.ID", {"type": "email"}, NOW) == Valid("Budi@contoh.co.id", "Budi@contoh.co.id")
    assert validate("budi@", {"type": "email"}, NOW) == Invalid("not_an_email")
    assert validate("a", {"type": "text", "min_length": 2}, NOW) == Invalid("too_short")
    assert validate("x" * 30, {"type": "text", "max_length": 20}, NOW) == Invalid("too_long")
    assert validate("  Budi   Santoso ", {"type": "text"}, NOW) == Valid("Budi Santoso", "Budi Santoso")
    spec = {"type": "regex", "pattern": r"[A-Z]{3}-\d{4}", "upper": True}
    assert validate("inv-1001", spec, NOW) == Valid("INV-1001", "INV-1001")
    assert validate("inv-10", spec, NOW) == Invalid("no_match")


def test_options_by_number_word_and_typo() -> None:
    options = [("clinic", ["Klinik Sehat", "Sehat Clinic"]), ("shop", ["Toko Batik", "Batik Shop"]),
               ("agent", ["Bicara dengan petugas"])]
    assert match_option("2", options) == "shop"
    assert match_option("3.", options) == "agent"
    assert match_option("4", options) is None
    assert match_option("toko batik", options) == "shop"
    assert match_option("klinik sehta", options) == "clinic"
    assert match_option("bicara dgn petugas", options) == "agent"
    assert match_option("pizza", options) is None
