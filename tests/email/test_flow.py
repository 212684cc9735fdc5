"""Mail in → bot reply out (threaded) → customer reply in the same conversation; HTML and attachments."""

from __future__ import annotations

import re

from sqlalchemy import select

from bot.channels.email_models import email_messages
from storage.models import conversations, customers, identities, messages, touchpoints
from tests.email.conftest import SUPPORT, mail, wait_mails
from tests.support import wait_for


async def test_mail_in_reply_out_threaded_and_customer_reply_joins_conversation(email_loket, dovecot, smtp):
    first = mail("Alice.Customer@Example.test", "Pesanan saya belum sampai", "Halo, pesanan #123 belum sampai.",
                 name="Alice Customer", msgid="<first-1@customer.example.test>")
    dovecot.append(first)
    [reply] = await wait_mails(smtp, "alice.customer@example.test")
    assert reply["In-Reply-To"] == "<first-1@customer.example.test>"
    assert "<first-1@customer.example.test>" in reply["References"]
    assert reply["Subject"] == "Re: Pesanan saya belum sampai"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert re.fullmatch(r"<loket-\d+-[0-9a-f]+@desk\.example\.test>", reply["Message-ID"])
    assert reply.get_content_type() == "multipart/alternative"
    plain = reply.get_body(("plain",)).get_content()
    html = reply.get_body(("html",)).get_content()
    assert "Alice Customer" in plain and "1. " in plain
    assert "<ol>" in html and "<li>" in html

    # the customer answers, quoting our mail
    answer = mail("alice.customer@example.test", "Re: Pesanan saya belum sampai",
                  "0\n\nPada Sen, 1 Jan 2024 pukul 10.00 Loket Support <support@desk.example.test> menulis:\n"
                  "> Halo Alice Customer! Selamat datang\n",
                  msgid="<second-2@customer.example.test>", in_reply_to=reply["Message-ID"],
                  references=f"<first-1@customer.example.test> {reply['Message-ID']}")
    dovecot.append(answer)
    replies = await wait_mails(smtp, "alice.customer@example.test", 2)
    second = replies[1]
    assert second["In-Reply-To"] == "<second-2@customer.example.test>"
    refs = second["References"].split()
    assert refs[-1] == "<second-2@customer.example.test>" and reply["Message-ID"] in refs

    convs = await email_loket.fetch(select(conversations))
    assert len(convs) == 1, "the reply must thread into the same conversation"
    assert convs[0]["state"] == "queued"  # "0" asked for a person
    assert convs[0]["meta"]["thread"]["message_id"] == "<second-2@customer.example.test>"
    ins = await email_loket.fetch(select(messages).where(messages.c.direction == "in").order_by(messages.c.id))
    assert [m["body"] for m in ins] == ["Halo, pesanan #123 belum sampai.", "0"]
    assert ins[0]["channel_message_id"] == "<first-1@customer.example.test>"
    raw_ref = ins[0]["meta"]["email"]["raw"]
    path = email_loket.settings.data_dir / "attachments" / raw_ref["sha256"][:2] / raw_ref["sha256"]
    assert path.read_bytes().replace(b"\r\n", b"\n") == first.as_bytes()
    [ident] = await email_loket.fetch(select(identities))
    assert ident["address"] == "alice.customer@example.test"
    [cust] = await email_loket.fetch(select(customers))
    assert cust["display_name"] == "Alice Customer"

    async def both_recorded() -> set[str] | None:
        outs = await email_loket.fetch(select(email_messages).where(email_messages.c.direction == "out"))
        return {o["message_id"] for o in outs} if len(outs) == 2 else None

    assert await wait_for(both_recorded, timeout=10, what="sent mails recorded") == {
        reply["Message-ID"], second["Message-ID"]}
    # nothing is deleted from the mailbox
    assert dovecot.count("INBOX") == 2
    kinds = [t["kind"] for t in await email_loket.fetch(select(touchpoints).order_by(touchpoints.c.id))]
    assert kinds.count("message_in") == 2


async def test_html_only_mail_and_attachments(email_loket, dovecot, smtp):
    html = ("<html><body><p>Hello, my <b>invoice</b> is wrong.</p>"
            "<div class=\"gmail_quote\"><div>On Mon, Jan 1, 2024 Support wrote:</div>"
            "<blockquote>old text</blockquote></div></body></html>")
    dovecot.append(mail("bob@example.test", "Invoice", "", html=html))
    await wait_mails(smtp, "bob@example.test")
    [m] = await email_loket.fetch(select(messages).where(messages.c.direction == "in"))
    assert "invoice" in m["body"] and "Hello" in m["body"]
    assert "old text" not in m["body"] and "wrote" not in m["body"]
    assert m["meta"]["email"]["html"] is True

    with_files = mail("carol@example.test", "Foto kerusakan", "Terlampir fotonya.")
    with_files.add_attachment(b"%PDF-1.4 receipt", maintype="application", subtype="pdf", filename="nota.pdf")
    with_files.add_attachment(b"\x89PNG\r\n\x1a\nfake", maintype="image", subtype="png", filename="foto.png")
    dovecot.append(with_files)
    await wait_mails(smtp, "carol@example.test")
    [m] = await email_loket.fetch(select(messages).where(messages.c.direction == "in",
                                                         messages.c.body == "Terlampir fotonya."))
    names = sorted(a["filename"] for a in m["attachments"])
    assert names == ["foto.png", "nota.pdf"]
    pdf = next(a for a in m["attachments"] if a["filename"] == "nota.pdf")
    stored = email_loket.settings.data_dir / "attachments" / pdf["sha256"][:2] / pdf["sha256"]
    assert stored.read_bytes() == b"%PDF-1.4 receipt" and pdf["content_type"] == "application/pdf"
    assert SUPPORT not in {a["filename"] for a in m["attachments"]}


async def test_idle_push_and_polling_fallback(dovecot, smtp, settings_factory):
    """With IDLE the server's push wakes the fetcher at once (the poll interval here is a minute); with IDLE off
    (IMAP_IDLE=false, or a server without it) the mailbox is polled."""
    import time

    from tests.email.conftest import COMPONENTS, email_env
    from tests.support import LoketServer

    for idle, poll in (("true", "60"), ("false", "0.2")):
        server = LoketServer(settings_factory(**email_env(dovecot, smtp, IMAP_IDLE=idle, IMAP_POLL_SECONDS=poll)),
                             components=COMPONENTS)
        await server.start()
        try:
            poller = server.rt.services["email_poller"]
            await wait_for(lambda p=poller: _synced(p), timeout=10, what="the first sync")
            started = time.monotonic()
            address = f"idle-{idle}@example.test"
            dovecot.append(mail(address, "Cepat", "Halo"))
            await wait_mails(smtp, address, timeout=8)
            assert time.monotonic() - started < 5
        finally:
            await server.stop()


async def _synced(poller) -> bool:  # noqa: ANN001
    return poller.syncs >= 1


async def test_agent_reply_markdown_html_attachment_and_no_auto_submitted(email_loket, dovecot, smtp):
    from bot.attachments import AttachmentStore
    from bot.effects import Send
    from bot.messages import Reply
    from bot.outbound import act_on_conversation

    dovecot.append(mail("judy@example.test", "Garansi", "Apakah garansi berlaku?", msgid="<judy-1@example.test>"))
    await wait_mails(smtp, "judy@example.test")
    [conv] = await email_loket.fetch(select(conversations))
    store = AttachmentStore(email_loket.settings.data_dir)
    att = store.save(b"%PDF-1.4 garansi", "garansi.pdf", "application/pdf")
    await act_on_conversation(email_loket.rt, conv["id"], [Send(Reply(
        "**Ya**, garansi berlaku 1 tahun.\n\n- simpan nota\n- <script>alert(1)</script>", author="agent",
        agent_id=None, attachments=(att,)))])
    replies = await wait_mails(smtp, "judy@example.test", 2)
    agent = replies[1]
    assert agent["Auto-Submitted"] is None and agent["In-Reply-To"] == "<judy-1@example.test>"
    assert agent["Subject"] == "Re: Garansi"
    html = agent.get_body(("html",)).get_content()
    assert "<strong>Ya</strong>" in html and "<li>simpan nota</li>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    [pdf] = list(agent.iter_attachments())
    assert pdf.get_filename() == "garansi.pdf" and pdf.get_content() == b"%PDF-1.4 garansi"

    async def recorded() -> dict | None:
        rows = await email_loket.fetch(select(messages).where(messages.c.direction == "out",
                                                              messages.c.author == "agent"))
        return rows[0] if rows and rows[0]["status"] == "sent" else None

    out = await wait_for(recorded, timeout=10, what="the agent reply recorded as sent")
    assert out["channel_message_id"] == agent["Message-ID"]
