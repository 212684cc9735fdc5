"""Reading customer mail: MIME → text + attachments, quoted-history stripping, loop/noise classification, DSNs.

Pure functions, no I/O: the IMAP fetcher hands raw bytes in, the email channel decides what to do with the
result. Everything here tolerates broken input — a malformed mail yields what could be read plus ``notes``
that say what could not.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr
from typing import Any

import html2text

MAX_REFERENCES = 20
AUTOMATED_LOCALPARTS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")
BULK_PRECEDENCE = {"bulk", "junk", "list"}
_AUTO_SUBJECT = re.compile(
    r"^(automatic reply|auto[- ]?reply|autoreply|out of (the )?office|abwesenheitsnotiz|balasan otomatis|"
    r"sedang tidak di kantor|di luar kantor)\b", re.IGNORECASE)


@dataclass
class RawAttachment:
    filename: str
    content_type: str
    data: bytes
    inline: bool = False


@dataclass
class ParsedMail:
    message_id: str  # provider id: the Message-ID, or ``sha256:<hex>`` of the raw bytes
    has_message_id: bool
    address: str  # sender, lowercased
    display_name: str | None
    subject: str
    text: str  # the new text only (quotes and signature stripped)
    full_text: str  # the whole readable body
    html: bool  # the body came from HTML
    in_reply_to: str | None
    references: list[str]
    attachments: list[RawAttachment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "message"  # message | auto_reply | bulk | bounce
    noise_reason: str | None = None
    dsn: dict[str, Any] | None = None


# ------------------------------------------------------------------ ids and headers
_MSGID_RE = re.compile(r"<[^<>\s]+>")


def normalize_message_id(value: str | None) -> str | None:
    if not value:
        return None
    found = _MSGID_RE.findall(str(value))
    if found:
        return found[0].strip()
    v = str(value).strip()
    return f"<{v}>" if v and " " not in v else None


def message_ids(value: str | None) -> list[str]:
    return _MSGID_RE.findall(str(value or ""))


def raw_hash_id(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def provider_id(raw: bytes) -> str:
    """The dedup key of a raw mail: its Message-ID, or a stable hash of the bytes when it has none."""
    try:
        headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
        mid = normalize_message_id(headers.get("Message-ID"))
    except Exception:  # noqa: BLE001 - unreadable headers: fall back to the hash
        mid = None
    if mid and len(mid) <= 250:
        return mid
    return raw_hash_id(raw)


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # noqa: BLE001 - a header the parser cannot decode
        return ""
    return str(value) if value is not None else ""


# ------------------------------------------------------------------ HTML and reply parsing
def html_to_text(html: str) -> str:
    conv = html2text.HTML2Text()
    conv.body_width = 0
    conv.ignore_images = True
    conv.ignore_emphasis = False
    conv.protect_links = True
    conv.unicode_snob = True
    try:
        text = conv.handle(html)
    except Exception:  # noqa: BLE001 - html2text on broken markup: strip tags instead
        text = re.sub(r"<[^>]+>", " ", html)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_QUOTE_HEADER_RES = [
    # English: "On Mon, 1 Jan 2024 at 10:00, Jane <jane@x> wrote:" (may wrap over two lines)
    re.compile(r"^\s*On\b.{0,300}?\bwrote:\s*$", re.IGNORECASE | re.DOTALL),
    # Indonesian: "Pada Sen, 1 Jan 2024 pukul 10.00, Budi <budi@x> menulis:"
    re.compile(r"^\s*Pada\b.{0,300}?\bmenulis:\s*$", re.IGNORECASE | re.DOTALL),
    # German/Dutch/French clients people forward from
    re.compile(r"^\s*(Am|Op|Le)\b.{0,300}?\b(schrieb|schreef|a écrit)\s*:\s*$", re.IGNORECASE | re.DOTALL),
]
_OUTLOOK_SEPARATOR = re.compile(
    r"^\s*(-{2,}\s*(Original Message|Pesan Asli|Forwarded message|Pesan yang diteruskan)\s*-{2,}|_{10,})\s*$",
    re.IGNORECASE,
)
_OUTLOOK_FROM = re.compile(r"^\s*\**(From|Dari)\s*:\**\s", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(r"^\s*\**(Sent|Date|Dikirim|Tanggal|To|Kepada|Subject|Subjek)\s*:", re.IGNORECASE)
_MOBILE_SIGNATURE = re.compile(
    r"^\s*(Sent from my \w+|Sent from (Outlook|Mail|Yahoo Mail|Gmail)\b|Get Outlook for \w+|"
    r"Dikirim dari\b|Terkirim dari\b|Sent via\b)",
    re.IGNORECASE,
)


def strip_reply(text: str) -> str:
    """The new part of a reply: quoted history, forwarded blocks and signatures removed."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cut = len(lines)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped == "--" or line.rstrip("\n") == "-- ":
            cut = i
            break
        if _MOBILE_SIGNATURE.match(line) or _OUTLOOK_SEPARATOR.match(line):
            cut = i
            break
        if _OUTLOOK_FROM.match(line) and any(_OUTLOOK_NEXT.match(nxt) for nxt in lines[i + 1 : i + 4]):
            cut = i
            break
        two = stripped + (" " + lines[i + 1].strip() if i + 1 < len(lines) else "")
        if any(rx.match(stripped) for rx in _QUOTE_HEADER_RES):
            cut = i
            break
        if stripped and not stripped.startswith(">") and any(rx.match(two) for rx in _QUOTE_HEADER_RES) \
                and (i + 1 < len(lines) and lines[i + 1].strip().endswith(("wrote:", "menulis:"))):
            cut = i
            break
    kept = [ln for ln in lines[:cut] if not ln.lstrip().startswith(">")]
    result = "\n".join(kept).strip()
    result = re.sub(r"\n{3,}", "\n\n", result)
    return result


_GMAIL_QUOTE = re.compile(r"<div[^>]*class=\"?gmail_quote[^>]*>.*", re.IGNORECASE | re.DOTALL)
_BLOCKQUOTE = re.compile(r"<blockquote[^>]*>.*?</blockquote>", re.IGNORECASE | re.DOTALL)
_OUTLOOK_DIV = re.compile(r"<div[^>]*id=\"?(divRplyFwdMsg|appendonsend)[^>]*>.*", re.IGNORECASE | re.DOTALL)


def strip_html_reply(html: str) -> str:
    """Drop Gmail/Outlook quoted blocks from HTML before converting it to text."""
    html = _GMAIL_QUOTE.sub("", html)
    html = _OUTLOOK_DIV.sub("", html)
    return _BLOCKQUOTE.sub("", html)


# ------------------------------------------------------------------ classification
def classify(msg: Message, address: str) -> tuple[str, str | None]:
    """``(kind, reason)``: bounce | auto_reply | bulk | message."""
    ctype = msg.get_content_type()
    report_type = (msg.get_param("report-type") or "") if ctype == "multipart/report" else ""
    local = address.split("@", 1)[0]
    if ctype == "multipart/report" and str(report_type).lower() == "delivery-status":
        return "bounce", "delivery status notification"
    if local in AUTOMATED_LOCALPARTS:
        return "bounce", f"sent by {local}"
    auto = _header(msg, "Auto-Submitted").strip().lower()
    if auto and not auto.startswith("no"):
        return "auto_reply", f"Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Autogenerated"):
        if _header(msg, name):
            return "auto_reply", name
    subject = _header(msg, "Subject").strip()
    if _AUTO_SUBJECT.match(subject):
        return "auto_reply", f"subject {subject[:60]!r}"
    if _header(msg, "Return-Path").strip() == "<>":
        return "auto_reply", "null return path"
    precedence = _header(msg, "Precedence").strip().lower()
    if precedence in BULK_PRECEDENCE:
        return "bulk", f"Precedence: {precedence}"
    if _header(msg, "List-Id") or _header(msg, "List-Unsubscribe"):
        return "bulk", "mailing list"
    if ctype == "multipart/report":
        return "auto_reply", f"report ({report_type or 'unknown type'})"
    return "message", None


def parse_dsn(msg: Message) -> dict[str, Any]:
    """What a delivery status notification says: recipient, status, reason and our original's Message-ID."""
    info: dict[str, Any] = {"recipients": [], "original_message_ids": []}
    for mid in message_ids(_header(msg, "In-Reply-To")) + message_ids(_header(msg, "References")):
        info["original_message_ids"].append(mid)
    human: list[str] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            blocks: list[Message] = []
            payload = part.get_payload()
            if isinstance(payload, list):
                blocks = [p for p in payload if isinstance(p, Message)]
            else:
                text = payload if isinstance(payload, str) else ""
                blocks = [message_from_bytes(b.encode(), policy=policy.compat32)
                          for b in re.split(r"\n\s*\n", text) if b.strip()]
            for block in blocks:
                orig = normalize_message_id(block.get("Original-Message-ID"))
                if orig:
                    info["original_message_ids"].append(orig)
                rcpt = block.get("Final-Recipient") or block.get("Original-Recipient")
                if rcpt:
                    addr = str(rcpt).split(";", 1)[-1].strip().strip("<>").lower()
                    info["recipients"].append({
                        "address": addr,
                        "action": str(block.get("Action") or "").strip().lower(),
                        "status": str(block.get("Status") or "").strip(),
                        "diagnostic": " ".join(str(block.get("Diagnostic-Code") or "").split()),
                    })
        elif ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            inner: Message | None = None
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                inner = payload[0]
            elif isinstance(payload, str):
                inner = message_from_bytes(payload.encode("utf-8", "replace"), policy=policy.compat32)
            if inner is not None:
                inner_mid = normalize_message_id(inner.get("Message-ID"))
                if inner_mid:
                    info["original_message_ids"].append(inner_mid)
                if not info["recipients"] and inner.get("To"):
                    for _, addr in getaddresses([str(inner.get("To"))]):
                        if addr:
                            info["recipients"].append({"address": addr.lower(), "action": "failed",
                                                       "status": "", "diagnostic": ""})
        elif ctype == "text/plain" and not human:
            try:
                human.append(_decode_text(part))
            except Exception:  # noqa: BLE001 - the human-readable part is optional
                pass
    if not info["original_message_ids"] and human:
        info["original_message_ids"].extend(message_ids(human[0]))
    if human:
        info["text"] = human[0][:2000]
    info["original_message_ids"] = list(dict.fromkeys(info["original_message_ids"]))
    failed = [r for r in info["recipients"] if r["action"] in ("failed", "")]
    delayed = [r for r in info["recipients"] if r["action"] == "delayed"]
    info["action"] = "failed" if failed or not info["recipients"] else ("delayed" if delayed else "other")
    first = (failed or info["recipients"] or [{}])[0]
    reason = first.get("diagnostic") or first.get("status") or ""
    if not reason and human:
        reason = " ".join(human[0].split())[:300]
    info["reason"] = reason or "the mail could not be delivered"
    return info


# ------------------------------------------------------------------ parsing
def _decode_text(part: Message) -> str:
    try:
        if isinstance(part, EmailMessage):
            content = part.get_content()
            if isinstance(content, str):
                return content
    except Exception:  # noqa: BLE001 - unknown charset, broken transfer encoding: decode by hand below
        pass
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # noqa: BLE001
        name = None
    return str(name) if name else None


def parse_mail(raw: bytes, *, max_attachment_bytes: int) -> ParsedMail:
    """Parse a raw mail. Never raises for bad MIME: what cannot be read becomes a note."""
    notes: list[str] = []
    msg = message_from_bytes(raw, policy=policy.default)
    if msg.defects:
        names = sorted({type(d).__name__ for d in msg.defects})
        notes.append("The mail is malformed (" + ", ".join(names) + "); Loket imported what it could read.")
    name, addr = parseaddr(_header(msg, "From"))
    address = addr.strip().lower()
    mid = normalize_message_id(_header(msg, "Message-ID"))
    in_reply_to = normalize_message_id(_header(msg, "In-Reply-To"))
    references = message_ids(_header(msg, "References"))[-MAX_REFERENCES:]
    subject = " ".join(_header(msg, "Subject").split())

    plain: list[str] = []
    htmls: list[str] = []
    attachments: list[RawAttachment] = []
    parts_seen = 0
    try:
        walker = list(msg.walk())
    except Exception as exc:  # noqa: BLE001
        walker = [msg]
        notes.append(f"The MIME structure could not be read ({exc}).")
    for part in walker:
        parts_seen += 1
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = (part.get_content_disposition() or "").lower()
        fname = _filename(part)
        if ctype in ("message/delivery-status", "text/rfc822-headers"):
            continue
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not fname:
            try:
                (plain if ctype == "text/plain" else htmls).append(_decode_text(part))
            except Exception as exc:  # noqa: BLE001
                notes.append(f"A {ctype} part could not be decoded ({exc}).")
            continue
        try:
            data = part.get_payload(decode=True)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"An attachment ({fname or ctype}) could not be decoded ({exc}).")
            continue
        if not isinstance(data, bytes):
            continue
        if len(data) > max_attachment_bytes:
            notes.append(
                f"The attachment {fname or ctype!r} ({len(data) / 1e6:.1f} MB) is over the "
                f"{max_attachment_bytes / 1e6:.0f} MB limit and was not imported; the original mail stays on the "
                "mail server."
            )
            continue
        ext = {"text/calendar": ".ics", "message/rfc822": ".eml"}.get(ctype, "")
        attachments.append(RawAttachment(
            filename=fname or f"attachment-{len(attachments) + 1}{ext}",
            content_type=ctype if ctype != "message/rfc822" else "application/octet-stream",
            data=data,
            inline=disposition == "inline",
        ))

    html_body = False
    full = "\n\n".join(p.strip() for p in plain if p.strip())
    if full:
        text = strip_reply(full)
    elif htmls:
        html_body = True
        html = "\n".join(htmls)
        full = html_to_text(html)
        text = strip_reply(html_to_text(strip_html_reply(html)))
    else:
        text = ""
        if not attachments and msg.get_content_maintype() not in ("multipart", "text"):
            notes.append(f"The mail has no readable text (content type {msg.get_content_type()}).")
    if not text and full:
        text = full.strip()  # everything looked quoted: keep the whole body rather than nothing
    kind, reason = classify(msg, address)
    dsn = parse_dsn(msg) if kind == "bounce" else None
    headers = {}
    for h in ("To", "Cc", "Date", "Auto-Submitted", "Precedence", "List-Id", "Reply-To"):
        v = _header(msg, h)
        if v:
            headers[h.lower()] = v[:500]
    return ParsedMail(
        message_id=provider_id(raw),  # the same key the fetcher dedups by
        has_message_id=bool(mid),
        address=address,
        display_name=" ".join(name.split()) or None,
        subject=subject,
        text=text,
        full_text=full,
        html=html_body,
        in_reply_to=in_reply_to,
        references=references,
        attachments=attachments,
        notes=notes,
        headers=headers,
        kind=kind,
        noise_reason=reason,
        dsn=dsn,
    )
