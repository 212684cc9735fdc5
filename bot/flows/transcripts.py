"""Flow tests: transcript files run through the real router and pipeline on a real database.

A transcript (YAML)::

    name: Book an appointment (Indonesian)
    language: id                      # the customer's language hint (optional)
    now: "2026-11-24T10:00:00+07:00"  # frozen clock, so opening hours and dates are stable (optional)
    env: {LOKET_DEMO: "true"}         # extra settings (optional)
    turns:
      - customer: halo                # the customer types
        bot:
          - contains: Selamat datang   # one entry per bot reply, in order
            choices: [Klinik Sehat (janji dokter, jam buka), Toko Batik (status pesanan, retur)]
      - press: Klinik Sehat           # the customer picks the option whose label starts with this
        bot: [Klinik Sehat]           # a plain string means `contains`
        state: {flow: clinic, node: welcome, conversation: bot, slots: {service: umum}}

Every transcript runs once per channel style, rendered the way each channel shows it:

* ``webchat``  – text + buttons; a press sends the button's value;
* ``telegram`` – text + inline keyboard rows; a press sends the callback data;
* ``whatsapp`` – one text with numbered lines; a press types the number;
* ``words``    – WhatsApp again, but a press types the option's label in lower case with a typo.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from sqlalchemy import select

from bot.channels.base import numbered_choices
from bot.clock import Clock, FrozenClock
from bot.config import Settings
from bot.messages import InboundMessage
from storage.models import conversations, customers, identities, messages

MODES = ("webchat", "telegram", "whatsapp", "words")
CALLBACK_DATA_LIMIT = 64


# ---------------------------------------------------------------------------------------------- renderers


def render_webchat(text: str, choices: list[dict[str, str]]) -> dict[str, Any]:
    return {"text": text, "buttons": [{"label": c["label"], "value": c["value"]} for c in choices]}


def _callback_data(value: str, index: int) -> str:
    try:
        from bot.channels.telegram import callback_data_for

        return str(callback_data_for(value, index))
    except ImportError:  # the Telegram channel is optional
        if len(value.encode()) <= CALLBACK_DATA_LIMIT and not value.startswith("#"):
            return value
        return f"#{index}"


def render_telegram(text: str, choices: list[dict[str, str]]) -> dict[str, Any]:
    rows = [[{"text": c["label"][:64] or c["value"][:64], "callback_data": _callback_data(c["value"], i)}]
            for i, c in enumerate(choices, 1)]
    return {"text": text, "reply_markup": {"inline_keyboard": rows} if rows else None}


def render_whatsapp(text: str, choices: list[dict[str, str]]) -> dict[str, Any]:
    return {"body": numbered_choices(text, choices)}


def rendered_text(mode: str, text: str, choices: list[dict[str, str]]) -> str:
    """The channel's text form of a reply: what a person would read."""
    if mode == "webchat":
        r = render_webchat(text, choices)
        return r["text"] + "".join(f"\n[{b['label']}]" for b in r["buttons"])
    if mode == "telegram":
        r = render_telegram(text, choices)
        rows = (r["reply_markup"] or {}).get("inline_keyboard", [])
        return r["text"] + "".join(f"\n[{b['text']}]" for row in rows for b in row)
    return str(render_whatsapp(text, choices)["body"])


def typo(label: str) -> str:
    """The label as someone types it on a phone: lower case, one letter missing from the longest word."""
    words = label.lower().split()
    if not words:
        return label
    i = max(range(len(words)), key=lambda k: len(words[k]))
    w = words[i]
    if len(w) >= 6 and w.isalpha():
        words[i] = w[: len(w) // 2] + w[len(w) // 2 + 1:]
    return " ".join(words)


# ---------------------------------------------------------------------------------------------- format


@dataclass
class Transcript:
    path: Path
    name: str
    turns: list[dict[str, Any]]
    language: str | None = None
    now: datetime | None = None
    env: dict[str, str] = field(default_factory=dict)
    flows: Path | None = None


class TranscriptError(Exception):
    pass


def load_transcript(path: Path) -> Transcript:
    data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("turns"), list) or not data["turns"]:
        raise TranscriptError(f"{path}: a transcript needs `turns:` (a list of customer/press + bot steps)")
    for i, turn in enumerate(data["turns"], 1):
        if not isinstance(turn, dict) or not ({"customer", "press"} & set(turn)):
            raise TranscriptError(f"{path}: turn {i} needs `customer: text` or `press: option label`")
    now = data.get("now")
    flows = data.get("flows")
    return Transcript(
        path=path, name=str(data.get("name") or path.stem), turns=data["turns"], language=data.get("language"),
        now=datetime.fromisoformat(str(now)) if now else None,
        env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
        flows=(path.parent / flows).resolve() if flows else None,
    )


def transcript_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and "transcripts" in p.parts)


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Result:
    transcript: str
    mode: str
    failures: list[str] = field(default_factory=list)
    turns: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _address(mode: str) -> tuple[str, str]:
    n = uuid.uuid4().int % 10**7
    if mode == "webchat":
        return "webchat", f"visitor-{uuid.uuid4().hex[:12]}"
    if mode == "telegram":
        return "telegram", str(700000000 + n)
    return "whatsapp", f"+62812{n:07d}"


def _pick(choices: list[dict[str, str]], wanted: str) -> tuple[int, dict[str, str]] | None:
    w = wanted.strip().lower()
    for i, c in enumerate(choices, 1):
        if c["label"].strip().lower() == w:
            return i, c
    for i, c in enumerate(choices, 1):
        if c["label"].strip().lower().startswith(w):
            return i, c
    return None


async def run_mode(rt: Any, tr: Transcript, mode: str) -> Result:
    """Play one transcript as one customer on one channel style."""
    res = Result(tr.name, mode)
    channel, address = _address(mode)
    last_choices: list[dict[str, str]] = []
    last_id = 0
    for n, turn in enumerate(tr.turns, 1):
        res.turns = n
        where = f"turn {n}"
        if "press" in turn:
            picked = _pick(last_choices, str(turn["press"]))
            if picked is None:
                res.failures.append(f"{where}: no option starting with {turn['press']!r}; the last reply offered "
                                    f"{[c['label'] for c in last_choices]}")
                break
            index, choice = picked
            if mode in ("webchat", "telegram"):
                text, payload = choice["label"], choice["value"]
            elif mode == "whatsapp":
                text, payload = str(index), None
            else:
                text, payload = typo(choice["label"]), None
        else:
            text, payload = str(turn["customer"]), None
        msg = InboundMessage(channel=channel, address=address, provider_message_id=uuid.uuid4().hex, text=text,
                             button_payload=payload, language_hint=tr.language,
                             display_name=turn.get("display_name"))
        res.log.append(f"> {text}" + (f"  [{payload}]" if payload else ""))
        events: list[tuple[str, dict[str, Any]]] = []
        async with rt.engine.begin() as conn:
            await rt.pipeline.handle_inbound(conn, msg, events)
        async with rt.engine.connect() as conn:
            ident = (await conn.execute(select(identities).where(
                identities.c.channel == channel, identities.c.address == address))).mappings().one()
            conv = (await conn.execute(select(conversations).where(conversations.c.identity_id == ident["id"])
                                       .order_by(conversations.c.id.desc()).limit(1))).mappings().one()
            cust = (await conn.execute(select(customers).where(customers.c.id == ident["customer_id"]))).mappings().one()
            outs = (await conn.execute(select(messages).where(
                messages.c.conversation_id == conv["id"], messages.c.direction == "out", messages.c.id > last_id)
                .order_by(messages.c.id))).mappings().all()
        if outs:
            last_id = outs[-1]["id"]
            last_choices = [c for c in (outs[-1]["choices"] or [])]
        shown = [rendered_text(mode, o["body"], list(o["choices"] or [])) for o in outs]
        for s in shown:
            res.log.append("< " + s.replace("\n", "\n  "))
        expected = turn.get("bot")
        if expected is not None:
            expected = expected if isinstance(expected, list) else [expected]
            if len(expected) != len(shown):
                res.failures.append(f"{where} ({text!r}): expected {len(expected)} bot replies, got {len(shown)}: "
                                    f"{shown}")
            for i, (exp, got) in enumerate(zip(expected, shown, strict=False), 1):
                exp = {"contains": exp} if isinstance(exp, str) else dict(exp)
                contains = exp.get("contains")
                parts = contains if isinstance(contains, list) else [contains] if contains else []
                for part in parts:
                    if str(part).lower() not in got.lower():
                        res.failures.append(f"{where} reply {i}: expected {part!r} in {got!r}")
                for label in exp.get("choices") or []:
                    if mode == "whatsapp" or mode == "words":
                        ok = any(line.split(". ", 1)[-1] == label for line in got.splitlines()
                                 if line[:1].isdigit())
                    else:
                        ok = f"[{label}]" in got
                    if not ok:
                        res.failures.append(f"{where} reply {i}: option {label!r} not shown in {got!r}")
        for part in turn.get("expect_any") or []:
            if not any(str(part).lower() in got.lower() for got in shown):
                res.failures.append(f"{where} ({text!r}): expected {part!r} in one of the replies {shown}")
        state = turn.get("state")
        if state:
            pos = conv["flow"] or {}
            checks = {"flow": pos.get("flow"), "node": pos.get("node"), "conversation": conv["state"],
                      "language": cust["language"]}
            for key, want in state.items():
                if key == "slots":
                    for sk, sv in (want or {}).items():
                        got_v = (pos.get("slots") or {}).get(sk)
                        if str(got_v) != str(sv) and not (isinstance(got_v, str) and str(sv) in got_v):
                            res.failures.append(f"{where}: slot {sk} is {got_v!r}, expected {sv!r}")
                elif key in checks:
                    if checks[key] != want:
                        res.failures.append(f"{where}: {key} is {checks[key]!r}, expected {want!r}")
                else:
                    res.failures.append(f"{where}: unknown state check {key!r} (use flow, node, conversation, "
                                        "language, slots)")
        if res.failures:
            break
    return res


def transcript_settings(tr: Transcript, database_url: str, data_dir: Path) -> Settings:
    from bot.flows.component import DEMO_PATH

    env = {
        "DATABASE_URL": database_url, "LOKET_DATA_DIR": str(data_dir), "LOKET_SECRET_KEY": "transcript-" + "x" * 40,
        "LOKET_PORT": "0", "LOKET_REDIS_PREFIX": f"tr{uuid.uuid4().hex[:6]}:",
    }
    flows = tr.flows or tr.path.parent.parent
    if flows.resolve() == DEMO_PATH.resolve():
        env["LOKET_DEMO"] = "true"
    else:
        env["LOKET_DEMO"] = "false"
        env["LOKET_FLOWS"] = str(flows)
    env.update(tr.env)
    return Settings.from_env(env, dotenv=False)


async def run_transcript(tr: Transcript, database_url: str, data_dir: Path, modes: tuple[str, ...] = MODES,
                         migrate: bool = True, components: list[str] | None = None) -> list[Result]:
    """Run one transcript in every channel style against ``database_url`` (migrated first when asked)."""
    from bot.runtime import Runtime

    settings = transcript_settings(tr, database_url, data_dir)
    clock: Clock = FrozenClock(tr.now) if tr.now else Clock()
    rt = Runtime(settings, role="web", clock=clock, components=components)
    await rt.prepare(migrate=migrate)
    await rt.start()
    try:
        # the channel styles are separate customers: play them side by side
        return list(await asyncio.gather(*(run_mode(rt, tr, mode) for mode in modes)))
    finally:
        await rt.stop()


async def run_path(path: Path, modes: tuple[str, ...] = MODES, components: list[str] | None = None) -> list[Result]:
    """``loket flows test PATH``: every transcript under PATH on a throw-away SQLite database each."""
    results: list[Result] = []
    for file in transcript_files(path):
        tr = load_transcript(file)
        with tempfile.TemporaryDirectory(prefix="loket-flowtest-") as tmp:
            url = f"sqlite:///{Path(tmp) / 'flowtest.db'}"
            results.extend(await run_transcript(tr, url, Path(tmp) / "data", modes, components=components))
    return results
