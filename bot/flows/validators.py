"""Answer validators for ``ask`` nodes: choice, number, phone, email, date/time, text, regex.

Each validator is a pure function ``(answer, spec, now, tz) -> Valid | Invalid``. ``spec`` is the node's
``validate`` mapping (already checked by the loader). Invalid answers carry a short reason code the flow can
use to pick a more helpful re-prompt; the node's own ``error`` text is what the customer sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from rapidfuzz import fuzz, process

VALIDATOR_KINDS = ("choice", "number", "phone", "email", "date", "time", "datetime", "text", "regex")
DEFAULT_TIMEZONE = "Asia/Jakarta"


@dataclass(frozen=True)
class Valid:
    value: Any
    display: str


@dataclass(frozen=True)
class Invalid:
    reason: str


Result = Valid | Invalid

# ----------------------------------------------------------------------------------------------- choice


def match_option(answer: str, options: list[tuple[str, list[str]]], cutoff: float = 80.0) -> str | None:
    """Pick an option value from a typed answer: its number, its value, one of its labels, or a close typo.

    ``options`` is ``[(value, [label, …]), …]`` in display order.
    """
    text = " ".join(answer.strip().lower().rstrip(".").split())
    if not text:
        return None
    if text.isdigit():
        n = int(text)
        return options[n - 1][0] if 1 <= n <= len(options) else None
    for value, labels in options:
        if text == value.lower() or text in {lbl.strip().lower() for lbl in labels}:
            return value
    keyed: dict[str, str] = {}
    for value, labels in options:
        for lbl in labels:
            keyed[lbl.strip().lower()] = value
        keyed.setdefault(value.lower().replace("_", " "), value)
    best = process.extractOne(text, list(keyed), scorer=fuzz.WRatio, score_cutoff=cutoff)
    if best is None:
        return None
    # refuse a tie between two different options: ask again rather than guess
    scores = process.extract(text, list(keyed), scorer=fuzz.WRatio, limit=3, score_cutoff=cutoff)
    top = [keyed[s[0]] for s in scores if s[1] >= best[1] - 0.5]
    if len(set(top)) > 1:
        return None
    return keyed[best[0]]


# ----------------------------------------------------------------------------------------------- number

_num_re = re.compile(r"^[+-]?\d+(?:[.,]\d+)?$")
_NUMBER_WORDS = {
    "nol": 0, "satu": 1, "dua": 2, "tiga": 3, "empat": 4, "lima": 5, "enam": 6, "tujuh": 7, "delapan": 8,
    "sembilan": 9, "sepuluh": 10, "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}


def parse_number(answer: str, spec: dict[str, Any]) -> Result:
    text = answer.strip().lower()
    if text in _NUMBER_WORDS:
        value: float = _NUMBER_WORDS[text]
    else:
        cleaned = text.replace(" ", "")
        if not _num_re.match(cleaned):
            return Invalid("not_a_number")
        value = float(cleaned.replace(",", "."))
    integer = spec.get("integer", True)
    if integer and value != int(value):
        return Invalid("not_whole")
    lo, hi = spec.get("min"), spec.get("max")
    if lo is not None and value < lo:
        return Invalid("too_small")
    if hi is not None and value > hi:
        return Invalid("too_large")
    out: int | float = int(value) if integer else value
    return Valid(out, str(out))


# ----------------------------------------------------------------------------------------------- phone


def parse_phone(answer: str, spec: dict[str, Any]) -> Result:
    region = spec.get("region", "ID")
    try:
        num = phonenumbers.parse(answer.strip(), region)
    except phonenumbers.NumberParseException:
        return Invalid("not_a_phone")
    if not phonenumbers.is_valid_number(num):
        return Invalid("not_a_phone")
    e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    return Valid(e164, phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.INTERNATIONAL))


# ----------------------------------------------------------------------------------------------- email

_email_re = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


def parse_email(answer: str, spec: dict[str, Any]) -> Result:
    text = answer.strip()
    if len(text) > 254 or not _email_re.match(text) or "." not in text.rsplit("@", 1)[1]:
        return Invalid("not_an_email")
    local, domain = text.rsplit("@", 1)
    value = f"{local}@{domain.lower()}"
    return Valid(value, value)


# ----------------------------------------------------------------------------------------------- date / time

_DAYPART = {"pagi": "am", "siang": "noon", "sore": "pm", "petang": "pm", "malam": "pm",
            "morning": "am", "afternoon": "pm", "evening": "pm", "night": "pm"}
_hour_re = re.compile(
    r"\b(?:jam|pukul|pkl\.?|at)\s*(\d{1,2})(?:[.:](\d{2}))?\s*(pagi|siang|sore|petang|malam|am|pm)?\b"
    r"|\b(\d{1,2})(?:[.:](\d{2}))?\s*(pagi|siang|sore|petang|malam|am|pm)\b"
    r"|\b(\d{1,2})[.:](\d{2})\b",
    re.IGNORECASE,
)
_MONTHS_EN = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
              "october", "november", "december")
_WEEKDAYS = {"senin": 0, "selasa": 1, "rabu": 2, "kamis": 3, "jumat": 4, "jum'at": 4, "sabtu": 5, "minggu": 6,
             "monday": 0, "tuesday": 1, "wednesday": 2, "thursday": 3, "friday": 4, "saturday": 5, "sunday": 6}


def _to_24h(hour: int, minute: int, part: str | None) -> tuple[int, int] | None:
    part = (part or "").lower()
    kind = _DAYPART.get(part, part)
    if kind == "pm" and hour < 12:
        hour += 12
    elif kind == "am" and hour == 12:
        hour = 0
    elif kind == "noon" and hour < 11:  # "jam 1 siang" = 13:00, "jam 11 siang" = 11:00
        hour += 12
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        return None
    return hour, minute


def _extract_time(text: str) -> tuple[str, tuple[int, int] | None, bool]:
    """Remove a time expression from ``text``; return (rest, (hour, minute) or None, found)."""
    m = _hour_re.search(text)
    if not m:
        return text, None, False
    if m.group(1):
        hm = _to_24h(int(m.group(1)), int(m.group(2) or 0), m.group(3))
    elif m.group(4):
        hm = _to_24h(int(m.group(4)), int(m.group(5) or 0), m.group(6))
    else:
        hm = _to_24h(int(m.group(7)), int(m.group(8)), None)
    rest = (text[: m.start()] + " " + text[m.end():]).strip()
    return rest, hm, True


def _relative_day(text: str, today: date) -> tuple[str, date | None]:
    """Indonesian and English relative days dateparser does not know: lusa, N hari lagi, X depan, tanggal N."""
    t = " " + text.lower() + " "
    rules: list[tuple[str, int]] = [
        (r"\b(hari ini|today|sekarang)\b", 0),
        (r"\b(besok|besuk|tomorrow)\b", 1),
        (r"\b(lusa|day after tomorrow)\b", 2),
        (r"\b(minggu depan|next week)\b", 7),
    ]
    for pattern, days in rules:
        if re.search(pattern, t):
            return re.sub(pattern, " ", t).strip(), today + timedelta(days=days)
    m = re.search(r"\b(\d{1,2})\s*(hari lagi|days? from now|days? later)\b", t)
    if m:
        return (t[: m.start()] + t[m.end():]).strip(), today + timedelta(days=int(m.group(1)))
    m = re.search(r"\b(senin|selasa|rabu|kamis|jum'?at|sabtu|minggu|monday|tuesday|wednesday|thursday|friday|"
                  r"saturday|sunday)(\s+(depan|ini))?\b|\bnext\s+(monday|tuesday|wednesday|thursday|friday|"
                  r"saturday|sunday)\b", t)
    if m:
        name = (m.group(1) or m.group(4)).replace("jum'at", "jumat")
        ahead = (_WEEKDAYS[name] - today.weekday()) % 7 or 7
        return (t[: m.start()] + t[m.end():]).strip(), today + timedelta(days=ahead)
    m = re.search(r"\b(?:tanggal|tgl\.?|the)\s*(\d{1,2})(?:st|nd|rd|th)?\b(?!\s*[/.-]?\s*\d)(?!\s+[a-z]{3})", t)
    if m:
        day = int(m.group(1))
        year, month = today.year, today.month
        for _ in range(13):
            try:
                cand = date(year, month, day)
            except ValueError:
                cand = None
            if cand and cand >= today:
                return (t[: m.start()] + t[m.end():]).strip(), cand
            month += 1
            if month == 13:
                year, month = year + 1, 1
    return text, None


def _dateparser() -> Any:
    """dateparser, imported on the first date or time answer (its language data is ~5 MB a process would
    otherwise carry without ever asking a date question)."""
    import dateparser

    return dateparser


def parse_when(answer: str, kind: str, now: datetime, tz: str = DEFAULT_TIMEZONE,
               spec: dict[str, Any] | None = None) -> Result:
    """Parse a date, time or date+time in Indonesian or English in the customer's timezone."""
    spec = spec or {}
    zone = ZoneInfo(tz)
    local_now = now.astimezone(zone)
    text = " ".join(answer.strip().split())
    if not text:
        return Invalid("empty")
    rest, hm, has_time = _extract_time(text)
    if has_time and hm is None:
        return Invalid("bad_time")
    rest, day = _relative_day(rest, local_now.date())
    rest = re.sub(r"\b(tanggal|tgl|hari|pada|on|di|at|pukul|jam)\b", " ", rest, flags=re.IGNORECASE).strip(" ,")
    if kind == "time":
        if hm is None:
            parsed = _dateparser().parse(text, languages=["id", "en"], settings={"RELATIVE_BASE": local_now.replace(
                tzinfo=None)})
            if parsed is None or not re.search(r"\d", text):
                return Invalid("not_a_time")
            hm = (parsed.hour, parsed.minute)
        value = f"{hm[0]:02d}:{hm[1]:02d}"
        return Valid(value, value)
    if day is None and rest:
        parsed = _dateparser().parse(
            rest, languages=["id", "en"],
            settings={"RELATIVE_BASE": local_now.replace(tzinfo=None), "PREFER_DATES_FROM": "future",
                      "DATE_ORDER": "DMY", "PREFER_DAY_OF_MONTH": "first"},
        )
        if parsed is None:
            return Invalid("not_a_date")
        day = parsed.date()
        if hm is None and kind == "datetime" and (parsed.hour or parsed.minute) and re.search(r"\d[:.]\d", rest):
            hm = (parsed.hour, parsed.minute)
    elif day is None:
        if kind == "date" or hm is None:
            return Invalid("not_a_date")
        day = local_now.date()  # only a time: today (tomorrow if already past)
        if (hm[0], hm[1]) <= (local_now.hour, local_now.minute):
            day += timedelta(days=1)
    if kind == "date":
        if spec.get("future") and day < local_now.date():
            return Invalid("in_past")
        return Valid(day.isoformat(), day.strftime("%d-%m-%Y"))
    if hm is None:
        return Invalid("need_time")
    moment = datetime(day.year, day.month, day.day, hm[0], hm[1], tzinfo=zone)
    if spec.get("future", True) and moment < local_now:
        return Invalid("in_past")
    return Valid(moment.isoformat(), moment.strftime("%d-%m-%Y %H:%M"))


# ----------------------------------------------------------------------------------------------- text / regex


def parse_text(answer: str, spec: dict[str, Any]) -> Result:
    text = " ".join(answer.strip().split())
    lo, hi = int(spec.get("min_length", 1)), spec.get("max_length")
    if len(text) < lo:
        return Invalid("too_short")
    if hi is not None and len(text) > int(hi):
        return Invalid("too_long")
    return Valid(text, text)


def parse_regex(answer: str, spec: dict[str, Any]) -> Result:
    text = answer.strip()
    if spec.get("upper"):
        text = text.upper()
    if not re.fullmatch(spec["pattern"], text):
        return Invalid("no_match")
    return Valid(text, text)


def validate(answer: str, spec: dict[str, Any], now: datetime, tz: str = DEFAULT_TIMEZONE,
             options: list[tuple[str, list[str]]] | None = None) -> Result:
    kind = spec.get("type", "text")
    if kind == "choice":
        picked = match_option(answer, options or [])
        return Valid(picked, picked) if picked is not None else Invalid("not_an_option")
    if kind == "number":
        return parse_number(answer, spec)
    if kind == "phone":
        return parse_phone(answer, spec)
    if kind == "email":
        return parse_email(answer, spec)
    if kind in {"date", "time", "datetime"}:
        return parse_when(answer, kind, now, tz, spec)
    if kind == "regex":
        return parse_regex(answer, spec)
    return parse_text(answer, spec)
