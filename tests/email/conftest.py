"""Fixtures for the email channel: a private Dovecot (IMAP) and an aiosmtpd server, both on loopback.

Dovecot runs from its own config in a temp dir (maildir, a passwd-file user with a plaintext password, no SSL).
When the tests run as root, Dovecot's login/internal processes run as its packaged users (``dovenull`` /
``dovecot``) — ``imap-login`` refuses root and a mail user with uid 0 is refused too — otherwise everything runs
as the current user.
"""

from __future__ import annotations

import asyncio
import grp
import imaplib
import os
import pwd
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import CI, free_port
from tests.support import LoketServer, wait_for

PASSWORD = "s3cret-imap"
SUPPORT = "support@desk.example.test"
COMPONENTS = ["bot.channels.email", "bot.health"]


def _user(name: str, fallback: str) -> str:
    try:
        pwd.getpwnam(name)
        return name
    except KeyError:
        return fallback


class Dovecot:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        self.conf = root / "dovecot.conf"
        self.log = root / "dovecot.log"
        self.maildir = root / "mail"

    def write_config(self) -> None:
        me = pwd.getpwuid(os.getuid()).pw_name
        if os.getuid() == 0:
            login_user = _user("dovenull", "nobody")
            internal_user = _user("dovecot", "nobody")
            mail_user = internal_user
        else:
            login_user = internal_user = mail_user = me
        mail_pw = pwd.getpwnam(mail_user)
        self.maildir.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            os.chown(self.maildir, mail_pw.pw_uid, mail_pw.pw_gid)
        # Users are created up front: Dovecot caches the passwd-file and delays failed logins.
        self.users = [f"u{i:03d}" for i in range(200)]
        (self.root / "users").write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}::::::\n" for u in self.users))
        self.conf.write_text(f"""
protocols = imap
listen = 127.0.0.1
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.log}
info_log_path = {self.log}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {internal_user}
default_internal_group = {grp.getgrgid(pwd.getpwnam(internal_user).pw_gid).gr_name}
default_login_user = {login_user}
first_valid_uid = 0
mail_uid = {mail_pw.pw_uid}
mail_gid = {mail_pw.pw_gid}
mail_location = maildir:{self.maildir}/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/users
}}
userdb {{
  driver = static
  args = uid={mail_pw.pw_uid} gid={mail_pw.pw_gid} home={self.maildir}/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  inet_listener http {{
    port = 0
  }}
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
""")

    def start(self) -> None:
        if not Path(self.binary).exists():
            pytest.fail("dovecot is not installed: `apt-get install dovecot-imapd` (the CI script does this)"
                        + (" — required under CI=true" if CI else ""))
        self.write_config()
        check = subprocess.run([self.binary, "-c", str(self.conf), "-n"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"dovecot config invalid: {check.stderr}")
        with open(self.root / "start.out", "wb") as out:  # a pipe would be held open by the daemon
            proc = subprocess.run([self.binary, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"dovecot failed to start: {(self.root / 'start.out').read_text()}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                imaplib.IMAP4("127.0.0.1", self.port, timeout=5).shutdown()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not start on port {self.port}: {self.log.read_text() if self.log.exists() else ''}")

    def stop(self) -> None:
        subprocess.run([self.binary, "-c", str(self.conf), "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        pid_file = self.root / "run" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def account(self) -> Account:
        """A fresh IMAP user with an empty maildir."""
        return Account(self.port, self.users.pop(0), PASSWORD)


@dataclass
class Account:
    port: int
    user: str
    password: str

    def client(self) -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.port, timeout=5)
        m.login(self.user, self.password)
        return m

    def append(self, raw: bytes | EmailMessage, mailbox: str = "INBOX") -> None:
        data = raw.as_bytes() if isinstance(raw, EmailMessage) else raw
        with self.client() as m:
            typ, resp = m.append(mailbox, None, None, data)
            assert typ == "OK", resp

    def count(self, mailbox: str = "INBOX") -> int:
        with self.client() as m:
            typ, data = m.select(mailbox, readonly=True)
            assert typ == "OK", data
            return int(data[0])

    def uidvalidity(self, mailbox: str = "INBOX") -> int:
        with self.client() as m:
            typ, data = m.status(mailbox, "(UIDVALIDITY)")
            assert typ == "OK", data
            return int(data[0].split(b"UIDVALIDITY ")[1].split(b")")[0])


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[Dovecot]:
    """One Dovecot for the session; each test gets its own user (and so its own mailboxes)."""
    root = Path(f"/tmp/loket-dovecot-{uuid.uuid4().hex[:10]}")  # short: unix socket paths are limited
    root.mkdir(mode=0o755)
    server = Dovecot(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dovecot(dovecot_server: Dovecot) -> Account:
    return dovecot_server.account()


# ---------------------------------------------------------------------------------------- SMTP
@dataclass
class SmtpRecorder:
    messages: list[Any] = field(default_factory=list)  # email.message.EmailMessage
    reject: dict[str, str] = field(default_factory=dict)  # rcpt address → SMTP reply, e.g. "550 5.1.1 ..."

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        if address.lower() in self.reject:
            return self.reject[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        from email import message_from_bytes, policy

        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        self.messages.append(message_from_bytes(content, policy=policy.default))
        return "250 Message accepted"

    def to(self, address: str) -> list[Any]:
        return [m for m in self.messages if address in str(m["To"])]


@pytest.fixture
def smtp() -> Iterator[SmtpRecorder]:
    recorder = SmtpRecorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    recorder.port = port  # type: ignore[attr-defined]
    try:
        yield recorder
    finally:
        controller.stop()


def email_env(dovecot: Account, smtp: SmtpRecorder, **extra: str) -> dict[str, str]:
    env = {
        "IMAP_HOST": "127.0.0.1",
        "IMAP_PORT": str(dovecot.port),
        "IMAP_USER": dovecot.user,
        "IMAP_PASSWORD": dovecot.password,
        "IMAP_SSL": "false",
        "IMAP_POLL_SECONDS": "0.2",
        "IMAP_TIMEOUT": "5",
        "IMAP_BACKOFF_CAP": "0.5",
        "IMAP_IMPORT_EXISTING": "true",  # tests append mail before Loket's first sync
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),  # type: ignore[attr-defined]
        "SMTP_STARTTLS": "false",
        "SMTP_FROM": f"Loket Support <{SUPPORT}>",
        "LOKET_ORG_NAME": "Toko Contoh",
    }
    env.update(extra)
    return env


@pytest.fixture
async def email_loket(dovecot: Account, smtp: SmtpRecorder, settings_factory: Any) -> AsyncIterator[LoketServer]:
    server = LoketServer(settings_factory(**email_env(dovecot, smtp)), components=COMPONENTS)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def mail(sender: str, subject: str, body: str, *, name: str | None = None, msgid: str | None = None,
         in_reply_to: str | None = None, references: str | None = None, headers: dict[str, str] | None = None,
         html: str | None = None) -> EmailMessage:
    m = EmailMessage()
    m["From"] = f"{name} <{sender}>" if name else sender
    m["To"] = SUPPORT
    m["Subject"] = subject
    m["Message-ID"] = msgid or make_msgid(domain="customer.example.test")
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
    if references:
        m["References"] = references
    for k, v in (headers or {}).items():
        m[k] = v
    if html is not None and not body:
        m.set_content(html, subtype="html")
    else:
        m.set_content(body)
        if html is not None:
            m.add_alternative(html, subtype="html")
    return m


async def wait_mails(smtp: SmtpRecorder, address: str, n: int = 1, timeout: float = 15.0) -> list[Any]:
    async def check() -> list[Any] | None:
        got = smtp.to(address)
        return got if len(got) >= n else None

    result: list[Any] = await wait_for(check, timeout=timeout, what=f"{n} mail(s) to {address}")
    return result


async def settle(seconds: float = 0.6) -> None:
    await asyncio.sleep(seconds)


