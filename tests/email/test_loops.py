"""Loop and noise protection: auto replies, list mail, bounces, SMTP refusals and the per-sender reply limit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.channels.email_models import email_messages
from storage.models import identities, inbox_items, messages, outbox_items, touchpoints
from tests.email.conftest import SUPPORT, email_env, mail, settle, wait_mails
from tests.support import LoketServer, wait_for


def dsn(original_id: str, recipient: str) -> bytes:
    """A delivery status notification as Postfix writes it (RFC 3464)."""
    return f"""From: MAILER-DAEMON@mx.desk.example.test (Mail Delivery System)
To: {SUPPORT}
Subject: Undelivered Mail Returned to Sender
Message-ID: <bounce-1@mx.desk.example.test>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUND"

--BOUND
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.desk.example.test.

I'm sorry to have to inform you that your message could not be delivered.

--BOUND
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.desk.example.test

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User
    unknown in virtual mailbox table

--BOUND
Content-Type: text/rfc822-headers

From: {SUPPORT}
To: {recipient}
Subject: Re: Tolong bantu
Message-ID: {original_id}

--BOUND--
""".replace("\n", "\r\n").encode()


async def test_auto_reply_bulk_and_bounce_get_no_answer(email_loket, dovecot, smtp):
    dovecot.append(mail("dave@example.test", "Tolong bantu", "Saya butuh bantuan.", name="Dave"))
    [reply] = await wait_mails(smtp, "dave@example.test")

    ooo = mail("dave@example.test", "Out of office: Re: Tolong bantu", "I am away until Monday.",
               headers={"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"})
    dovecot.append(ooo)
    newsletter = mail("news@shop.example.test", "Promo minggu ini", "Diskon 50%!",
                      headers={"Precedence": "bulk", "List-Id": "<promo.shop.example.test>"})
    dovecot.append(newsletter)

    async def auto_recorded() -> int:
        rows = await email_loket.fetch(select(touchpoints).where(touchpoints.c.kind == "auto_reply"))
        return len(rows) >= 2

    await wait_for(auto_recorded, timeout=10, what="auto replies on the timeline")
    ins = await email_loket.fetch(select(messages).where(messages.c.direction == "in").order_by(messages.c.id))
    assert [m["purpose"] for m in ins] == ["message", "auto_reply", "auto_reply"]

    dovecot.append(dsn(reply["Message-ID"], "dave@example.test"))

    async def bounced() -> dict | None:
        rows = await email_loket.fetch(select(messages).where(messages.c.channel_message_id == reply["Message-ID"]))
        return rows[0] if rows and rows[0]["status"] == "failed" else None

    out = await wait_for(bounced, timeout=10, what="the bounced message marked failed")
    assert "5.1.1" in out["error"] and "User unknown" in out["error"]
    [dave] = await email_loket.fetch(select(identities).where(identities.c.address == "dave@example.test"))
    assert dave["unreachable"] is True and "User unknown" in dave["unreachable_reason"]
    deliveries = await email_loket.fetch(select(touchpoints).where(touchpoints.c.kind == "delivery",
                                                                   touchpoints.c.message_id == out["id"]))
    assert [d["payload"]["status"] for d in deliveries] == ["sent", "failed"]
    assert deliveries[-1]["payload"]["source"] == "bounce"
    # the bounce is not a customer message: no identity for the mailer daemon, nothing routed
    addresses = {r["address"] for r in await email_loket.fetch(select(identities))}
    assert addresses == {"dave@example.test", "news@shop.example.test"}
    assert len(await email_loket.fetch(select(inbox_items))) == 3
    [row] = await email_loket.fetch(select(email_messages).where(email_messages.c.status == "bounce"))
    assert row["loket_message_id"] == out["id"]
    await settle()
    assert len(smtp.messages) == 1, "no answer to an auto reply, a list mail or a bounce"
    assert dovecot.count("INBOX") == 4


async def test_smtp_refusals_and_reply_limit(dovecot, smtp, settings_factory):
    smtp.reject["gone@example.test"] = "550 5.1.1 <gone@example.test>: Recipient address rejected: User unknown"
    server = LoketServer(settings_factory(**email_env(dovecot, smtp, SMTP_MAX_BOT_REPLIES="3")),
                         components=["bot.channels.email"])
    await server.start()
    try:
        dovecot.append(mail("gone@example.test", "Halo", "Apakah toko buka?"))

        async def failed() -> dict | None:
            rows = await server.fetch(select(messages).where(messages.c.direction == "out",
                                                             messages.c.status == "failed"))
            return rows[0] if rows else None

        out = await wait_for(failed, timeout=10, what="the refused reply marked failed")
        assert out["error"].startswith("SMTP 550") and "User unknown" in out["error"]
        [ident] = await server.fetch(select(identities).where(identities.c.address == "gone@example.test"))
        assert ident["unreachable"] is True

        # a temporary refusal (4xx) is retried until the server takes the mail
        smtp.reject["later@example.test"] = "451 4.3.0 Try again later"
        dovecot.append(mail("later@example.test", "Halo", "Kapan buka?"))

        async def retried() -> bool:
            rows = await server.fetch(select(messages).where(messages.c.direction == "out",
                                                             messages.c.error.like("SMTP 451%")))
            return bool(rows)

        await wait_for(retried, timeout=10, what="a 451 recorded as a retry")
        del smtp.reject["later@example.test"]
        await wait_mails(smtp, "later@example.test")
        [later] = await server.fetch(select(identities).where(identities.c.address == "later@example.test"))
        assert later["unreachable"] is False

        # another robot answering every mail: the bot stops after 3 replies in the window
        for i in range(5):
            dovecot.append(mail("robot@example.test", f"Ticket {i}", f"We received your message {i}."))

        async def all_routed() -> bool:
            rows = await server.fetch(select(messages).where(messages.c.direction == "out",
                                                             messages.c.customer_id.isnot(None)))
            done = [r for r in rows if r["status"] in ("sent", "failed")]
            return len(done) >= 7

        await wait_for(all_routed, timeout=15, what="all replies settled")
        assert len(smtp.to("robot@example.test")) == 3
        limited = await server.fetch(select(messages).where(messages.c.error.like("loop protection%")))
        assert len(limited) == 2
    finally:
        await server.stop()


async def test_a_from_header_without_a_real_address_fails_once_with_the_reason(email_loket: LoketServer,
                                                                              dovecot: Any) -> None:
    # an unquoted "<…>" in the display name: lenient parsing takes "img src=x …" as the address
    raw = (f"From: <img src=x onerror=alert(1)> <budi@customer.example.test>\r\nTo: {SUPPORT}\r\n"
           "Subject: halo\r\nMessage-ID: <bad-from-1@customer.example.test>\r\n\r\nhalo\r\n").encode()
    dovecot.append(raw)

    async def failed() -> dict[str, Any] | None:
        rows = await email_loket.fetch(select(messages).where(messages.c.direction == "out"))
        return rows[0] if rows and rows[0]["status"] == "failed" else None

    out = await wait_for(failed, timeout=15, what="the reply marked failed")
    assert "cannot write a mail to" in out["error"]
    (box,) = await email_loket.fetch(select(outbox_items).where(outbox_items.c.message_id == out["id"]))
    assert box["attempts"] == 1  # permanent: not retried
    (ident,) = await email_loket.fetch(select(identities))
    assert ident["unreachable"] is True
