"""Email: IMAP in (``email_imap``), SMTP out, threading, reply parsing (``email_parse``), loop protection.

Active parts follow the settings: ``IMAP_HOST`` starts the fetcher (a background task in ``all``/``worker``
processes), ``SMTP_HOST`` registers the ``email`` channel for replies. See docs/email.md.

Inbound, per mail (``EmailChannel.import_raw``):

* the raw bytes are kept content-addressed under the data directory (``meta.email.raw``);
* a delivery status notification (or a mail from mailer-daemon/postmaster) is a **bounce**: it is handled here,
  in one transaction, never routed — our original (found by Message-ID) is marked ``failed`` with the reason,
  the address ``unreachable``, and a ``delivery`` touchpoint is written;
* auto replies (``Auto-Submitted``, ``X-Autoreply``/``X-Autorespond``) and list/bulk mail are routed as
  ``kind="auto_reply"``: the router step ``email_auto_reply`` (order 5) records them on the timeline and the
  bot does not answer;
* everything else is a customer message: the new text only (quotes and signatures stripped, HTML → text),
  attachments within the size limit, notes for what could not be imported.

A durable event sink copies the thread headers (Message-ID, References, Subject) of each inbound mail into
``conversation.meta["thread"]`` and writes the notes as ``email_note`` touchpoints, in the routing transaction;
the dispatcher hands ``meta["thread"]`` to ``send`` so replies carry ``In-Reply-To``/``References``.

Outbound: multipart/alternative text + HTML (Markdown rendered, HTML escaped), choices as a numbered list,
attachments, our own Message-ID, ``Auto-Submitted: auto-replied`` on bot replies, and a per-address limit on
automatic replies so two robots cannot mail each other forever.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import secrets
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any

import aiosmtplib
from markdown_it import MarkdownIt
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.attachments import AttachmentRejected, AttachmentStore
from bot.channels.base import PermanentSendError, TransientSendError, numbered_choices
from bot.channels.email_imap import ImapConfig, ImapPoller
from bot.channels.email_models import email_messages
from bot.channels.email_parse import ParsedMail, parse_mail
from bot.config import ConfigError, _bool
from bot.effects import Decision, Touch
from bot.messages import Attachment, InboundMessage, OutboundMessage, ProviderReceipt
from bot.router import RouteContext
from bot.runtime import Runtime
from bot.texts import register, t
from storage.db import insert_ignore
from storage.models import conversations, identities, messages
from storage.repositories import add_touchpoint

log = logging.getLogger("loket.email")

CHANNEL = "email"
ORDER_EMAIL_NOISE = 5
MB = 1024 * 1024

register({
    "email.subject": {"id": "Pesan dari {org}", "en": "Message from {org}"},
    "email.choices_hint": {"id": "Balas dengan nomor pilihan Anda.", "en": "Reply with the number of your choice."},
})


def _int(cfg: dict[str, str], key: str, default: int, prefix: str) -> int:
    raw = (cfg.get(key) or "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{prefix}_{key.upper()}={raw!r} is not a whole number; e.g. {default}") from exc


def imap_config(cfg: dict[str, str]) -> ImapConfig:
    use_ssl = _bool(cfg.get("ssl"), True)
    if not cfg.get("user") or not cfg.get("password"):
        raise ConfigError("IMAP_HOST is set but IMAP_USER/IMAP_PASSWORD are not; set both (see docs/email.md)")
    try:
        poll = float(cfg.get("poll_seconds") or 30)
    except ValueError as exc:
        raise ConfigError(f"IMAP_POLL_SECONDS={cfg.get('poll_seconds')!r} is not a number of seconds") from exc
    return ImapConfig(
        host=cfg["host"],
        port=_int(cfg, "port", 993 if use_ssl else 143, "IMAP"),
        user=cfg["user"],
        password=cfg["password"],
        use_ssl=use_ssl,
        mailboxes=[m.strip() for m in (cfg.get("mailbox") or "INBOX").split(",") if m.strip()],
        poll_seconds=poll,
        idle=_bool(cfg.get("idle"), True),
        processed_folder=(cfg.get("processed_folder") or "").strip() or None,
        failed_folder=(cfg.get("failed_folder") or "Loket/Failed").strip(),
        max_failures=max(1, _int(cfg, "max_failures", 5, "IMAP")),
        import_existing=_bool(cfg.get("import_existing"), False),
        timeout=float(cfg.get("timeout") or 30),
        backoff_cap=float(cfg.get("backoff_cap") or 60),
    )


# ---------------------------------------------------------------------------------------------- channel
class EmailChannel:
    name = CHANNEL

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.smtp = dict(rt.settings.smtp)
        self.imap = dict(rt.settings.imap)
        self.store = AttachmentStore(rt.settings.data_dir)
        self.max_in = _int(self.imap, "max_attachment_bytes", 10 * MB, "IMAP")
        self.max_out = _int(self.smtp, "max_attachment_bytes", 10 * MB, "SMTP")
        self.max_bot_replies = _int(self.smtp, "max_bot_replies", 5, "SMTP")
        self.bot_reply_window = timedelta(seconds=_int(self.smtp, "bot_reply_window_seconds", 600, "SMTP"))
        sender = self.smtp.get("from") or self.smtp.get("user") or ""
        self.from_name, self.from_addr = parseaddr(sender)
        self.from_addr = self.from_addr.lower()
        self.domain = self.from_addr.rpartition("@")[2] or "loket.invalid"
        own = {self.from_addr}
        if "@" in (self.imap.get("user") or ""):
            own.add(self.imap["user"].lower())
        self.own_addresses = {a for a in own if a}
        self._md = MarkdownIt("commonmark", {"html": False, "breaks": True})

    # ------------------------------------------------------------------ inbound
    def _save_raw(self, raw: bytes) -> Attachment:
        digest = hashlib.sha256(raw).hexdigest()
        path = self.store.path_for(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp" + str(os.getpid()))
            tmp.write_bytes(raw)
            os.replace(tmp, path)
        return Attachment(filename="message.eml", content_type="message/rfc822", size=len(raw), sha256=digest)

    async def import_raw(self, raw: bytes, mailbox: str, uidvalidity: int, uid: int) -> str:
        """Import one fetched mail; returns its status for the fetcher's bookkeeping. Raises → retried later."""
        parsed = parse_mail(raw, max_attachment_bytes=self.max_in)
        where = {"mailbox": mailbox, "uidvalidity": uidvalidity, "uid": uid}
        if not parsed.address:
            log.warning("IMAP %s UID %s has no sender address; not imported (it stays in the mailbox)", mailbox, uid)
            return "ignored"
        if parsed.address in self.own_addresses:
            return "ignored"  # our own mail (a copy, a Bcc or a loop through a forward): never answer ourselves
        raw_ref = self._save_raw(raw)
        if parsed.kind == "bounce":
            await self.handle_bounce(parsed, raw_ref, where)
            return "bounce"
        notes = list(parsed.notes)
        atts: list[Attachment] = []
        for a in parsed.attachments:
            try:
                atts.append(self.store.save(a.data, a.filename, a.content_type))
            except AttachmentRejected as exc:
                notes.append(f"The attachment {a.filename!r} was not imported: {exc.reason}; the original mail "
                             "stays on the mail server.")
        kind = "auto_reply" if parsed.kind in ("auto_reply", "bulk") else "message"
        text = parsed.text or ("" if parsed.attachments else parsed.subject)
        meta = {"email": {
            "message_id": parsed.message_id,
            "has_message_id": parsed.has_message_id,
            "subject": parsed.subject,
            "in_reply_to": parsed.in_reply_to,
            "references": parsed.references,
            "html": parsed.html,
            "full_text": parsed.full_text[:20000],
            "raw": raw_ref.to_dict(),
            "notes": notes,
            "noise": parsed.noise_reason,
            "headers": parsed.headers,
            **where,
        }}
        msg = InboundMessage(
            channel=CHANNEL, address=parsed.address, provider_message_id=parsed.message_id, text=text[:20000],
            display_name=parsed.display_name, attachments=tuple(atts), kind=kind, meta=meta,
        )
        await self.rt.inbox.submit(msg)
        if notes:
            log.warning("IMAP %s UID %s imported with notes: %s", mailbox, uid, " | ".join(notes))
        return "auto_reply" if kind == "auto_reply" else "imported"

    async def handle_bounce(self, parsed: ParsedMail, raw_ref: Attachment, where: dict[str, Any]) -> None:
        """A delivery failure report: mark our original failed and the address unreachable. Never routed."""
        dsn = parsed.dsn or {"original_message_ids": [], "recipients": [], "action": "failed",
                             "reason": "the mail could not be delivered"}
        now = self.rt.clock.now()
        events: list[tuple[str, dict[str, Any]]] = []
        async with self.rt.engine.begin() as conn:
            first = (await conn.execute(insert_ignore(conn, email_messages).values(
                direction="in", message_id=parsed.message_id, status="bounce", kind="bounce",
                address=parsed.address, subject=parsed.subject[:500], attempts=0, raw_sha256=raw_ref.sha256,
                created_at=now, updated_at=now, **where,
            ).returning(email_messages.c.id))).first()
            if first is None:
                return  # handled before (a crash after commit, before the fetcher's bookkeeping)
            orig = await self._find_original(conn, dsn["original_message_ids"])
            reason = f"bounced: {dsn['reason']}"[:1000]
            payload = {"status": "failed", "error": reason, "source": "bounce", "bounce_message_id":
                       parsed.message_id, "recipients": dsn["recipients"][:5], "raw": raw_ref.to_dict()}
            if dsn["action"] == "delayed":
                payload = {**payload, "status": "delayed"}
            if orig is not None:
                await conn.execute(update(email_messages).where(email_messages.c.id == first[0]).values(
                    conversation_id=orig["conversation_id"], loket_message_id=orig["id"]))
                if dsn["action"] != "delayed":
                    await conn.execute(update(messages).where(messages.c.id == orig["id"]).values(
                        status="failed", error=reason))
                    await conn.execute(update(identities).where(identities.c.id == orig["identity_id"]).values(
                        unreachable=True, unreachable_reason=reason))
                    events.append(("message.status", {
                        "conversation_id": orig["conversation_id"], "customer_id": orig["customer_id"],
                        "message_id": orig["id"], "channel": CHANNEL, "status": "failed", "error": reason}))
                await add_touchpoint(
                    conn, customer_id=orig["customer_id"], conversation_id=orig["conversation_id"],
                    message_id=orig["id"], kind="delivery", now=now, channel=CHANNEL, payload=payload,
                )
                log.warning("email message %s bounced (%s): %s", orig["id"], dsn["action"], dsn["reason"])
                return
            # No original found: still mark the failed recipients unreachable (a hard bounce says so).
            marked = 0
            if dsn["action"] != "delayed":
                for rcpt in dsn["recipients"]:
                    ident = (await conn.execute(select(identities).where(
                        identities.c.channel == CHANNEL, identities.c.address == rcpt["address"],
                    ))).mappings().first()
                    if ident is None:
                        continue
                    await conn.execute(update(identities).where(identities.c.id == ident["id"]).values(
                        unreachable=True, unreachable_reason=reason))
                    await add_touchpoint(conn, customer_id=ident["customer_id"], kind="delivery", now=now,
                                         channel=CHANNEL, payload=payload)
                    marked += 1
            log.warning("a bounce (%s) matched none of our messages (%s); %s address(es) marked unreachable",
                        parsed.message_id, ", ".join(dsn["original_message_ids"]) or "no Message-ID", marked)
        if events:
            await self.rt.events.publish(events)

    async def _find_original(self, conn: AsyncConnection, ids: list[str]) -> dict[str, Any] | None:
        if not ids:
            return None
        cols = (messages.c.id, messages.c.conversation_id, messages.c.customer_id,
                conversations.c.identity_id)
        join = messages.join(conversations, conversations.c.id == messages.c.conversation_id)
        row = (await conn.execute(select(*cols).select_from(join).where(
            messages.c.channel == CHANNEL, messages.c.direction == "out", messages.c.channel_message_id.in_(ids),
        ).order_by(messages.c.id.desc()).limit(1))).mappings().first()
        if row is None:
            row = (await conn.execute(select(*cols).select_from(join.join(
                email_messages, email_messages.c.loket_message_id == messages.c.id)).where(
                email_messages.c.direction == "out", email_messages.c.message_id.in_(ids),
            ).order_by(messages.c.id.desc()).limit(1))).mappings().first()
        return dict(row) if row else None

    # ------------------------------------------------------------------ outbound
    def render(self, out: OutboundMessage) -> EmailMessage:
        reply = out.reply
        thread = out.thread or {}
        mail = EmailMessage()
        mail["From"] = formataddr((self.from_name, self.from_addr)) if self.from_name else self.from_addr
        mail["To"] = out.address
        subject = (thread.get("subject") or "").strip()
        if subject:
            if not re.match(r"^(re|aw|sv|balas)\s*:", subject, re.IGNORECASE):
                subject = f"Re: {subject}"
        else:
            lang = (out.identity_meta or {}).get("language")
            subject = t("email.subject", lang, org=self.rt.services.get("org_name", "Loket"))
        mail["Subject"] = subject
        mail["Date"] = format_datetime(self.rt.clock.now())
        mail["Message-ID"] = f"<loket-{out.message_id}-{secrets.token_hex(6)}@{self.domain}>"
        parent = thread.get("message_id")
        refs = [r for r in (thread.get("references") or []) if isinstance(r, str)]
        if parent:
            mail["In-Reply-To"] = parent
            if parent not in refs:
                refs.append(parent)
        if refs:
            mail["References"] = " ".join(refs[-20:])
        if reply.author != "agent":
            mail["Auto-Submitted"] = "auto-replied"
            mail["X-Auto-Response-Suppress"] = "All"  # Exchange: no out-of-office answers to the bot
        mail["X-Loket-Conversation"] = str(out.conversation_id)
        choices = [c.to_dict() for c in reply.choices]
        mail.set_content(numbered_choices(reply.text, choices))
        body = self._md.render(reply.text or "")
        if choices:
            items = "".join(f"<li>{html.escape(c['label'])}</li>" for c in choices)
            hint = html.escape(t("email.choices_hint", (out.identity_meta or {}).get("language")))
            body += f"<ol>{items}</ol><p><small>{hint}</small></p>"
        mail.add_alternative(
            f'<!doctype html><html><body><div style="font-family:sans-serif;font-size:14px">{body}</div>'
            "</body></html>", subtype="html")
        total = 0
        for a in reply.attachments:
            if not a.sha256:
                raise PermanentSendError(f"attachment {a.filename!r} is not stored on this server; attach it again")
            try:
                data = self.store.read(a.sha256)
            except (OSError, ValueError) as exc:
                raise PermanentSendError(f"attachment {a.filename!r} is missing from the data directory") from exc
            total += len(data)
            if total > self.max_out:
                raise PermanentSendError(
                    f"attachments are {total / 1e6:.1f} MB, over the {self.max_out / 1e6:.0f} MB email limit "
                    "(SMTP_MAX_ATTACHMENT_BYTES); send a link instead")
            maintype, _, subtype = (a.content_type or "application/octet-stream").partition("/")
            mail.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream", filename=a.filename)
        return mail

    async def _recent_bot_replies(self, address: str) -> int:
        since = self.rt.clock.now() - self.bot_reply_window
        async with self.rt.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(email_messages).where(
                email_messages.c.direction == "out", email_messages.c.address == address,
                email_messages.c.author != "agent", email_messages.c.created_at >= since,
            ))).scalar_one())

    async def send(self, out: OutboundMessage) -> ProviderReceipt:
        if out.reply.author != "agent":
            recent = await self._recent_bot_replies(out.address)
            if recent >= self.max_bot_replies:
                raise PermanentSendError(
                    f"loop protection: {recent} automatic replies went to {out.address} in the last "
                    f"{int(self.bot_reply_window.total_seconds() / 60)} minutes; not sending more "
                    "(an agent can still reply)", code="rate_limited")
        mail = self.render(out)
        use_ssl = _bool(self.smtp.get("ssl"), self.smtp.get("port") == "465")
        starttls_raw = self.smtp.get("starttls")
        start_tls = None if not starttls_raw else _bool(starttls_raw)
        port = _int(self.smtp, "port", 465 if use_ssl else (587 if start_tls else 25), "SMTP")
        try:
            await aiosmtplib.send(
                mail, hostname=self.smtp["host"], port=port,
                username=self.smtp.get("user") or None, password=self.smtp.get("password") or None,
                use_tls=use_ssl, start_tls=False if use_ssl else start_tls,
                timeout=float(self.smtp.get("timeout") or 30),
            )
        except ValueError as exc:  # e.g. a From header so malformed that its "address" is not an address
            raise PermanentSendError(f"cannot write a mail to {out.address!r}: {exc}", unreachable=True,
                                     code="bad_address") from exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0] if exc.recipients else None
            raise _classify_smtp(first.code if first else 550, first.message if first else str(exc)) from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise TransientSendError(f"the SMTP server refused our login ({exc.code} {exc.message}); check "
                                     "SMTP_USER/SMTP_PASSWORD (an app password for Gmail/Outlook)",
                                     code=str(exc.code)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _classify_smtp(exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientSendError(f"SMTP: {type(exc).__name__}: {exc}", ambiguous=isinstance(
                exc, aiosmtplib.SMTPServerDisconnected)) from exc
        mid = str(mail["Message-ID"])
        now = self.rt.clock.now()
        try:
            async with self.rt.engine.begin() as conn:
                await conn.execute(insert_ignore(conn, email_messages).values(
                    direction="out", message_id=mid, status="sent", kind=out.reply.purpose[:24],
                    address=out.address, subject=str(mail["Subject"])[:500], attempts=1, author=out.reply.author,
                    loket_message_id=out.message_id, conversation_id=out.conversation_id,
                    created_at=now, updated_at=now))
        except Exception:  # noqa: BLE001 - the mail is sent; the dispatcher records the Message-ID as well
            log.exception("recording sent mail %s failed", out.message_id)
        return ProviderReceipt(provider_message_id=mid, status="sent", detail={"message_id_header": mid})


def _classify_smtp(code: int, message: str) -> Exception:
    text = " ".join(str(message).split())
    reason = f"SMTP {code} {text}"[:500]
    if 400 <= code < 500:
        return TransientSendError(reason, code=str(code))
    unreachable = code in (550, 551, 553) or bool(re.search(r"\b5\.1\.\d\b", text)) or \
        bool(re.search(r"user unknown|no such user|does not exist|mailbox unavailable", text, re.IGNORECASE))
    return PermanentSendError(reason, unreachable=unreachable, code=str(code))


# ---------------------------------------------------------------------------------------------- routing
async def email_noise_step(ctx: RouteContext) -> Decision | None:
    """Auto replies, out-of-office and list mail: on the timeline, never answered by the bot."""
    msg = ctx.message
    if msg.channel != CHANNEL or msg.kind != "auto_reply":
        return None
    em = msg.meta.get("email") or {}
    return Decision().add(Touch("auto_reply", {"reason": em.get("noise"), "subject": em.get("subject"),
                                               "text": msg.text[:500]}, actor="customer"))


async def email_thread_sink(conn: AsyncConnection, name: str, payload: dict[str, Any], now: Any) -> None:
    """In the routing transaction: thread headers into the conversation, import notes onto the timeline."""
    if name != "message.created" or payload.get("channel") != CHANNEL or payload.get("direction") != "in":
        return
    row = (await conn.execute(select(messages.c.meta, messages.c.purpose).where(
        messages.c.id == payload["message_id"]))).first()
    if row is None:
        return
    em = (row[0] or {}).get("email") or {}
    if not em:
        return
    if row[1] != "auto_reply" and em.get("has_message_id"):
        conv_meta = (await conn.execute(select(conversations.c.meta).where(
            conversations.c.id == payload["conversation_id"]))).scalar_one()
        thread = {"message_id": em.get("message_id"), "references": list(em.get("references") or [])[-19:],
                  "subject": em.get("subject") or (conv_meta or {}).get("thread", {}).get("subject")}
        await conn.execute(update(conversations).where(conversations.c.id == payload["conversation_id"]).values(
            meta={**(conv_meta or {}), "thread": thread}))
    for note in em.get("notes") or []:
        await add_touchpoint(
            conn, customer_id=payload["customer_id"], conversation_id=payload["conversation_id"],
            message_id=payload["message_id"], kind="email_note", now=now, channel=CHANNEL, actor="system",
            payload={"note": note, "mailbox": em.get("mailbox"), "uid": em.get("uid"),
                     "message_id": em.get("message_id")},
        )


# ---------------------------------------------------------------------------------------------- setup
def setup(rt: Runtime) -> None:
    imap, smtp = rt.settings.imap, rt.settings.smtp
    if not imap.get("host") and not smtp.get("host"):
        return
    channel = EmailChannel(rt)
    rt.services["email_channel"] = channel
    rt.router.add("email_auto_reply", email_noise_step, ORDER_EMAIL_NOISE)
    rt.pipeline.event_sinks.append(email_thread_sink)
    if smtp.get("host"):
        if not channel.from_addr:
            raise ConfigError("SMTP_HOST is set but SMTP_FROM is not; set it to the support address, e.g. "
                              "SMTP_FROM='Support <support@example.com>'")
        rt.channels.add(channel)
    if imap.get("host"):
        poller = ImapPoller(imap_config(imap), rt.engine, rt.clock, channel.import_raw)
        rt.services["email_poller"] = poller
        rt.add_task("email-imap", poller.run, roles={"all", "worker"})
