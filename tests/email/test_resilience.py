"""Never lose mail: malformed MIME, oversized attachments, dropped connections, UIDVALIDITY changes, import
failures (retried, then moved to Loket/Failed), and the optional processed folder."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select
from typer.testing import CliRunner

from bot.channels.email_cli import app as cli_app
from bot.channels.email_models import email_mailbox_state, email_messages
from storage.models import inbox_items, messages, touchpoints
from tests.email.conftest import COMPONENTS, SUPPORT, email_env, mail, wait_mails
from tests.support import LoketServer, wait_for

MALFORMED = (
    b"From: Eve <eve@example.test>\r\n"
    b"To: " + SUPPORT.encode() + b"\r\n"
    b"Subject: =?utf-8?B?broken-encoded-word\r\n"
    b"Message-ID: <malformed-1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n'
    b"\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/plain; charset=no-such-charset\r\n"
    b"\r\n"
    b"Printer rusak, mohon dibantu.\r\n"
    b"--XYZ\r\n"
    b"Content-Type: application/pdf; name=bad.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=bad.pdf\r\n"
    b"\r\n"
    b"JVBERi0xLjQK!!!not*base64***\r\n"
    # the closing boundary is missing
)


async def test_malformed_mime_and_oversized_attachment_keep_what_can_be_read(dovecot, smtp, settings_factory):
    server = LoketServer(settings_factory(**email_env(dovecot, smtp, IMAP_MAX_ATTACHMENT_BYTES="2000")),
                         components=COMPONENTS)
    await server.start()
    try:
        dovecot.append(MALFORMED)
        await wait_mails(smtp, "eve@example.test")
        [m] = await server.fetch(select(messages).where(messages.c.direction == "in"))
        assert "Printer rusak" in m["body"]
        notes = await server.fetch(select(touchpoints).where(touchpoints.c.kind == "email_note"))
        assert notes and "malformed" in notes[0]["payload"]["note"]
        assert notes[0]["conversation_id"] == m["conversation_id"]

        big = mail("frank@example.test", "Video kerusakan", "Videonya terlampir, dan struknya.")
        big.add_attachment(b"x" * 5000, maintype="video", subtype="mp4", filename="rusak.mp4")
        big.add_attachment(b"%PDF small", maintype="application", subtype="pdf", filename="struk.pdf")
        dovecot.append(big)
        await wait_mails(smtp, "frank@example.test")
        [m] = await server.fetch(select(messages).where(messages.c.direction == "in",
                                                        messages.c.channel == "email",
                                                        messages.c.body.like("Videonya%")))
        assert [a["filename"] for a in m["attachments"]] == ["struk.pdf"]
        [note] = await server.fetch(select(touchpoints).where(touchpoints.c.kind == "email_note",
                                                              touchpoints.c.conversation_id == m["conversation_id"]))
        assert "rusak.mp4" in note["payload"]["note"] and "limit" in note["payload"]["note"]
        assert "stays on the mail server" in note["payload"]["note"]
        assert dovecot.count("INBOX") == 2, "nothing is deleted"
    finally:
        await server.stop()


class CuttingProxy:
    """A TCP proxy in front of Dovecot that cuts every connection once, in the middle of the Nth FETCH reply."""

    def __init__(self, target_port: int, cut_after_fetches: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after_fetches
        self.fetches = 0
        self.cut = False
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                up_w.write(data)
                await up_w.drain()
            up_w.close()

        async def server_to_client() -> None:
            while data := await up_r.read(65536):
                if not self.cut and b" FETCH (" in data:
                    self.fetches += 1
                    if self.fetches >= self.cut_after:
                        self.cut = True
                        writer.write(data[: len(data) // 2])  # half a message, then the line goes dead
                        await writer.drain()
                        writer.transport.abort()
                        up_w.transport.abort()
                        return
                writer.write(data)
                await writer.drain()
            writer.close()

        try:
            await asyncio.gather(client_to_server(), server_to_client())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            up_w.transport.abort()


async def test_connection_dropped_mid_fetch_reconnects_without_loss_or_duplicates(dovecot, smtp, settings_factory):
    n = 6
    for i in range(n):
        dovecot.append(mail(f"cust{i}@example.test", f"Pertanyaan {i}", f"Pertanyaan nomor {i}. " + "isi " * 400))
    proxy = CuttingProxy(dovecot.port, cut_after_fetches=3)
    await proxy.start()
    env = email_env(dovecot, smtp, IMAP_PORT=str(proxy.port))
    server = LoketServer(settings_factory(**env), components=COMPONENTS)
    await server.start()
    try:
        async def all_in() -> bool:
            return (await server.scalar(select(func.count()).select_from(inbox_items))) >= n

        await wait_for(all_in, timeout=20, what="all mails imported after the reconnect")
        await wait_mails(smtp, f"cust{n - 1}@example.test")
        assert proxy.cut and proxy.connections >= 2, "the connection was cut mid-fetch and re-opened"
        poller = server.rt.services["email_poller"]
        assert poller.connects >= 2
        await asyncio.sleep(0.6)  # more sync rounds: still no duplicates
        assert await server.scalar(select(func.count()).select_from(inbox_items)) == n
        assert await server.scalar(select(func.count()).select_from(messages).where(
            messages.c.direction == "in")) == n
        rows = await server.fetch(select(email_messages).where(email_messages.c.direction == "in"))
        assert len(rows) == n and {r["status"] for r in rows} == {"imported"}
        assert dovecot.count("INBOX") == n
    finally:
        await server.stop()
        await proxy.stop()


async def test_uidvalidity_change_does_not_reimport(dovecot, smtp, settings_factory):
    with dovecot.client() as m:
        m.create("Support")
    originals = [mail(f"gina{i}@example.test", f"Soal {i}", f"Isi {i}") for i in range(3)]
    for msg in originals:
        dovecot.append(msg, "Support")
    server = LoketServer(settings_factory(**email_env(dovecot, smtp, IMAP_MAILBOX="INBOX,Support")),
                         components=COMPONENTS)
    await server.start()
    try:
        async def count_in() -> int:
            return int(await server.scalar(select(func.count()).select_from(inbox_items)))

        async def synced() -> dict | None:
            rows = await server.fetch(select(email_mailbox_state).where(email_mailbox_state.c.mailbox == "Support"))
            return rows[0] if rows and rows[0]["last_uid"] == 3 else None

        state = await wait_for(synced, timeout=10, what="three mails handled")
        assert await count_in() == 3
        before = dovecot.uidvalidity("Support")
        assert state["uidvalidity"] == before

        # the mailbox is re-created (a server migration, a restore): same mails, new UIDVALIDITY, one new mail
        with dovecot.client() as m:
            m.delete("Support")
        await asyncio.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock
        with dovecot.client() as m:
            m.create("Support")
        for msg in originals:
            dovecot.append(msg, "Support")
        dovecot.append(mail("henry@example.test", "Baru", "Pesan baru setelah migrasi"), "Support")
        assert dovecot.uidvalidity("Support") != before

        async def new_state() -> bool:
            rows = await server.fetch(select(email_mailbox_state).where(email_mailbox_state.c.mailbox == "Support"))
            return bool(rows) and rows[0]["uidvalidity"] != before and rows[0]["last_uid"] == 4

        await wait_for(new_state, timeout=10, what="the new UIDVALIDITY synced")
        await wait_mails(smtp, "henry@example.test")
        assert await count_in() == 4, "the three known mails are not imported again"
        assert len(smtp.messages) == 4
    finally:
        await server.stop()


async def test_failing_import_is_retried_then_moved_to_failed_folder(dovecot, smtp, settings_factory):
    settings = settings_factory(**email_env(dovecot, smtp, IMAP_MAX_FAILURES="3",
                                            IMAP_PROCESSED_FOLDER="Loket/Processed"))
    blocker = settings.data_dir / "attachments"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory: every import that stores the raw mail fails")
    server = LoketServer(settings, components=COMPONENTS)
    await server.start()
    try:
        dovecot.append(mail("ivan@example.test", "Gagal", "Pesan ini gagal diimpor."))

        async def failed_row() -> dict | None:
            rows = await server.fetch(select(email_messages).where(email_messages.c.status == "failed"))
            return rows[0] if rows else None

        row = await wait_for(failed_row, timeout=15, what="the mail given up after 3 attempts")
        assert row["attempts"] == 3 and "NotADirectoryError" in row["last_error"]
        assert await server.scalar(select(func.count()).select_from(inbox_items)) == 0

        async def moved() -> bool:
            return dovecot.count("Loket/Failed") == 1 and dovecot.count("INBOX") == 0

        await wait_for(moved, timeout=10, what="the mail moved to Loket/Failed")

        # the disk is fixed: new mail flows again, and lands in the processed folder afterwards
        blocker.unlink()
        dovecot.append(mail("ivan@example.test", "Lagi", "Pesan kedua."))
        await wait_mails(smtp, "ivan@example.test")
        await wait_for(lambda: _count_is(dovecot, "Loket/Processed", 1), timeout=10, what="moved to processed")
        assert dovecot.count("INBOX") == 0 and dovecot.count("Loket/Failed") == 1

        # a supervisor sees the given-up mail, resets it and moves it back: it is imported once
        env = {"DATABASE_URL": settings.database_url, "LOKET_SECRET_KEY": "x" * 40,
               "LOKET_DATA_DIR": str(settings.data_dir), **email_env(dovecot, smtp)}
        runner = CliRunner()
        out = await asyncio.to_thread(runner.invoke, cli_app, ["status"], env=env)
        assert out.exit_code == 0, out.output
        assert "failed" in out.output and "NotADirectoryError" in out.output
        out = await asyncio.to_thread(runner.invoke, cli_app, ["check"], env=env)
        assert out.exit_code == 0, out.output
        assert "login OK" in out.output and "IDLE: yes" in out.output and "mailbox INBOX: OK" in out.output
        out = await asyncio.to_thread(runner.invoke, cli_app, ["retry", row["message_id"]], env=env)
        assert out.exit_code == 0, out.output
        with dovecot.client() as m:
            m.select("Loket/Failed")
            typ, _ = m.uid("MOVE", "1:*", "INBOX")
            assert typ == "OK"
        await wait_mails(smtp, "ivan@example.test", 2)
        assert await server.scalar(select(func.count()).select_from(inbox_items)) == 2
        [again] = await server.fetch(select(email_messages).where(email_messages.c.id == row["id"]))
        assert again["status"] == "imported"
    finally:
        await server.stop()


async def _count_is(dovecot: Any, mailbox: str, n: int) -> bool:
    return bool(dovecot.count(mailbox) == n)


async def test_first_sync_leaves_existing_mail_alone_by_default(dovecot, smtp, settings_factory):
    dovecot.append(mail("old@example.test", "Lama", "Pesan lama dari tahun lalu."))
    server = LoketServer(settings_factory(**email_env(dovecot, smtp, IMAP_IMPORT_EXISTING="false")),
                         components=COMPONENTS)
    await server.start()
    try:
        poller = server.rt.services["email_poller"]

        async def synced() -> bool:
            return bool(poller.syncs >= 1)

        await wait_for(synced, timeout=10, what="the first sync")
        dovecot.append(mail("new@example.test", "Baru", "Pesan baru."))
        await wait_mails(smtp, "new@example.test")
        assert smtp.to("old@example.test") == []
        assert await server.scalar(select(func.count()).select_from(inbox_items)) == 1
        assert dovecot.count("INBOX") == 2
    finally:
        await server.stop()
