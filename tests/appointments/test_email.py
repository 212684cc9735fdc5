"""Email reminders: the text plus an RFC 5545 ``.ics`` invitation over real SMTP (aiosmtpd), and the answer
read back from a real IMAP mailbox (Dovecot) confirming the appointment."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.appointments.helpers import (
    COMPONENTS,
    advance,
    appointment,
    import_rows,
    row,
    start,
    wait_reminder,
)
from tests.email.conftest import (  # noqa: F401 - fixtures
    Account,
    SmtpRecorder,
    dovecot,
    dovecot_server,
    email_env,
    mail,
    smtp,
    wait_mails,
)
from tests.support import wait_for

CUSTOMER = "yohana@example.com"


async def test_email_reminder_with_ics_and_reply_by_mail(dovecot: Account, smtp: SmtpRecorder,  # noqa: F811
                                                         settings_factory: Any, tmp_path: Path) -> None:
    loket, clock = await start(settings_factory, components=["bot.channels.email", *COMPONENTS],
                               **email_env(dovecot, smtp))
    try:
        await import_rows(loket, tmp_path, [row("M1", name="Yohana", email="Yohana@Example.com", channel="email",
                                                timezone="Asia/Jayapura", start="2026-11-25 10:00")])
        await advance(loket, clock, timedelta(hours=30))
        await wait_reminder(loket, "M1", "24h", "sent")
        sent = (await wait_mails(smtp, CUSTOMER))[0]
        body = sent.get_body(preferencelist=("plain",)).get_content()
        assert "Rabu, 25 November 2026 10.00 WIT" in body
        ics = [p for p in sent.iter_attachments() if p.get_content_type() == "text/calendar"]
        assert len(ics) == 1
        cal = ics[0].get_content()
        cal = cal.decode() if isinstance(cal, bytes) else cal
        assert "BEGIN:VEVENT" in cal and "DTSTART:20261125T010000Z" in cal and "DTEND:20261125T013000Z" in cal
        dovecot.append(mail(CUSTOMER, "Re: " + str(sent["Subject"]), "1", in_reply_to=str(sent["Message-ID"])))

        async def confirmed() -> bool:
            return (await appointment(loket, "M1"))["status"] == "confirmed"

        await wait_for(confirmed, timeout=20, what="confirmed by email")
        answer = (await wait_mails(smtp, CUSTOMER, 2))[1]
        assert "dikonfirmasi" in answer.get_body(preferencelist=("plain",)).get_content()
    finally:
        await loket.stop()
