"""The IMAP fetcher: one connection, one or more mailboxes, IDLE when the server offers it, polling otherwise.

Bookkeeping (``email_mailbox_state``, ``email_messages``) makes it safe to crash anywhere:

* a mailbox's UIDVALIDITY and the highest UID handled are stored after each mail is handled;
* a mail is handled when the importer returned (it has committed the mail through ``rt.inbox.submit`` or its
  bounce transaction); a mail already known by its Message-ID is skipped, so a changed UIDVALIDITY or a
  crash between import and bookkeeping never imports twice;
* a mail whose import raises stays where it is and is retried on every sync; after ``max_failures`` it is
  moved to the failed folder (``Loket/Failed``) and left ``failed`` in ``email_messages`` for supervisors;
* nothing is ever deleted: the optional processed folder is a MOVE (or COPY + expunge of that UID only).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aioimaplib import aioimaplib
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.email_models import email_mailbox_state, email_messages
from bot.channels.email_parse import provider_id
from bot.clock import Clock
from storage.db import insert_ignore

log = logging.getLogger("loket.email")

DONE_STATUSES = ("imported", "auto_reply", "bounce", "ignored", "failed")
Importer = Callable[[bytes, str, int, int], Awaitable[str]]  # raw, mailbox, uidvalidity, uid -> status


@dataclass
class ImapConfig:
    host: str
    port: int
    user: str
    password: str
    use_ssl: bool
    mailboxes: list[str]
    poll_seconds: float = 30.0
    idle: bool = True
    processed_folder: str | None = None
    failed_folder: str = "Loket/Failed"
    max_failures: int = 5
    import_existing: bool = False  # first sync of a mailbox: import the mail already in it, or start after it
    timeout: float = 30.0
    backoff_cap: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def account(self) -> str:
        return f"{self.user}@{self.host}"


class ImapDisconnected(Exception):
    """The server closed the connection (or stopped answering)."""


class ImapPoller:
    def __init__(self, cfg: ImapConfig, engine: AsyncEngine, clock: Clock, importer: Importer) -> None:
        self.cfg = cfg
        self.engine = engine
        self.clock = clock
        self.importer = importer
        self.client: aioimaplib.IMAP4 | None = None
        self._lost = asyncio.Event()
        self._delimiter = "/"
        self.connects = 0
        self.syncs = 0
        self.wakeup = asyncio.Event()

    # ------------------------------------------------------------ connection
    @staticmethod
    def _lost_callback(lost: asyncio.Event, holder: list[aioimaplib.IMAP4]) -> Callable[[Exception | None], None]:
        """Bound to one connection, so a late callback of an old connection cannot fail the new one."""

        def on_lost(exc: Exception | None) -> None:
            lost.set()
            for client in holder:  # wake an IDLE wait at once
                try:
                    client.protocol.idle_queue.put_nowait(aioimaplib.STOP_WAIT_SERVER_PUSH)
                except Exception:  # noqa: BLE001
                    pass

        return on_lost

    async def _cmd(self, coro: Awaitable[Any], what: str) -> Any:
        """Run one IMAP command, failing fast when the connection drops."""
        if self._lost.is_set():
            if asyncio.iscoroutine(coro):
                coro.close()
            raise ImapDisconnected(f"connection lost before {what}")
        task = asyncio.ensure_future(coro)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=self.cfg.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if task not in done:
            task.cancel()
            raise ImapDisconnected(f"no answer to {what} (connection lost or timed out)")
        res = task.result()
        return res

    async def connect(self) -> aioimaplib.IMAP4:
        self._lost = lost = asyncio.Event()
        holder: list[aioimaplib.IMAP4] = []
        ctx = ssl.create_default_context() if self.cfg.use_ssl else None
        client = aioimaplib.IMAP4(host=self.cfg.host, port=self.cfg.port, timeout=self.cfg.timeout,
                                  conn_lost_cb=self._lost_callback(lost, holder), ssl_context=ctx)
        holder.append(client)
        self.client = client
        await self._cmd(client.wait_hello_from_server(), "the greeting")
        res = await self._cmd(client.login(self.cfg.user, self.cfg.password), "LOGIN")
        if res.result != "OK":
            raise PermissionError(f"IMAP login as {self.cfg.user!r} on {self.cfg.host} was refused: "
                                  f"{_text(res.lines)}; check IMAP_USER/IMAP_PASSWORD (an app password for Gmail/Outlook)")
        lst = await self._cmd(client.list('""', '""'), "LIST")
        for line in lst.lines:
            m = re.search(rb'\) "(.)" ', bytes(line))
            if m:
                self._delimiter = m.group(1).decode()
        for folder in filter(None, [self.cfg.failed_folder, self.cfg.processed_folder]):
            await self._cmd(client.create(self._folder(folder)), "CREATE")  # NO when it exists: fine
        self.connects += 1
        log.info("IMAP connected to %s:%s as %s (IDLE %s)", self.cfg.host, self.cfg.port, self.cfg.user,
                 "yes" if client.has_capability("IDLE") else "no")
        return client

    def _folder(self, name: str) -> str:
        name = name.replace("/", self._delimiter)
        return f'"{name}"' if " " in name else name

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            if client.has_pending_idle():
                client.idle_done()
            if not self._lost.is_set():
                await asyncio.wait_for(client.logout(), 2)
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()

    # ------------------------------------------------------------ main loop
    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                client = await self.connect()
                backoff = 0.5
                while True:
                    for mailbox in self.cfg.mailboxes:
                        await self.sync_mailbox(client, mailbox)
                    self.syncs += 1
                    await self._wait(client)
            except asyncio.CancelledError:
                await self.close()
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect with backoff on any failure
                log.warning("IMAP %s: %s: %s; reconnecting in %.1fs", self.cfg.account, type(exc).__name__, exc,
                            backoff)
                await self.close()
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(self.cfg.backoff_cap, backoff * 2)

    async def _wait(self, client: aioimaplib.IMAP4) -> None:
        """Until new mail may be there: IDLE on the first mailbox (others are polled at the same pace)."""
        if self.cfg.idle and client.has_capability("IDLE"):
            await self._cmd(client.select(self.cfg.mailboxes[0]), "SELECT")
            idle = await self._cmd(client.idle_start(timeout=self.cfg.poll_seconds), "IDLE")
            try:
                while True:
                    push = await asyncio.wait_for(client.wait_server_push(), self.cfg.poll_seconds + 5)
                    if push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                        break
                    lines = push if isinstance(push, list) else [push]
                    if any(b"EXISTS" in bytes(x) for x in lines if isinstance(x, bytes | bytearray)):
                        break
            finally:
                if self._lost.is_set():
                    idle.cancel()
                else:
                    client.idle_done()
                    await self._cmd(asyncio.wait_for(idle, self.cfg.timeout), "DONE")
            if self._lost.is_set():
                raise ImapDisconnected("connection lost during IDLE")
            return
        self.wakeup.clear()
        try:
            await asyncio.wait_for(self.wakeup.wait(), self.cfg.poll_seconds)
        except TimeoutError:
            pass
        await self._cmd(client.noop(), "NOOP")

    # ------------------------------------------------------------ one mailbox
    async def sync_mailbox(self, client: aioimaplib.IMAP4, mailbox: str) -> None:
        res = await self._cmd(client.select(self._folder(mailbox)), f"SELECT {mailbox}")
        if res.result != "OK":
            raise RuntimeError(f"cannot open mailbox {mailbox!r}: {_text(res.lines)}; check IMAP_MAILBOX")
        uidvalidity = _uidvalidity(res.lines)
        state = await self._state(mailbox)
        if state is None and not self.cfg.import_existing:
            # First sync: the mail already there is history, not new questions; answering it all would send a
            # bot reply to every old mail. Start after it (IMAP_IMPORT_EXISTING=true imports it instead).
            last_uid = max(0, _uidnext(res.lines) - 1)
            await self._save_state(mailbox, uidvalidity, last_uid, exists=False)
            log.info("IMAP mailbox %s: first sync; %s existing mail(s) left alone (IMAP_IMPORT_EXISTING=true "
                     "imports them)", mailbox, _exists(res.lines))
        elif state is None or state["uidvalidity"] != uidvalidity:
            if state is not None:
                log.warning("IMAP mailbox %s: UIDVALIDITY changed %s → %s; rescanning, known mail is skipped by "
                            "Message-ID", mailbox, state["uidvalidity"], uidvalidity)
            await self._save_state(mailbox, uidvalidity, 0, exists=state is not None)
            last_uid = 0
        else:
            last_uid = int(state["last_uid"])
        found = await self._cmd(client.uid_search("UID", f"{last_uid + 1}:*", charset=None), "UID SEARCH")
        uids = sorted(u for u in _numbers(found.lines) if u > last_uid)
        retry = await self._retry_uids(mailbox, uidvalidity)
        for uid in sorted(set(retry) - set(uids)):
            await self.handle_uid(client, mailbox, uidvalidity, uid, advance=False)
        for uid in uids:
            await self.handle_uid(client, mailbox, uidvalidity, uid, advance=True)

    async def handle_uid(self, client: aioimaplib.IMAP4, mailbox: str, uidvalidity: int, uid: int,
                         advance: bool) -> None:
        res = await self._cmd(client.uid("fetch", str(uid), "(UID BODY.PEEK[])"), f"UID FETCH {uid}")
        raw = _literal(res.lines)
        if res.result != "OK":
            raise RuntimeError(f"UID FETCH {uid} in {mailbox} failed: {_text(res.lines)}")
        if raw is None:  # expunged meanwhile
            await self._forget_retry(mailbox, uidvalidity, uid)
            if advance:
                await self._advance(mailbox, uidvalidity, uid)
            return
        pid = provider_id(raw)
        known = await self._known(pid)
        if known is not None and known["status"] in DONE_STATUSES:
            if advance:
                await self._advance(mailbox, uidvalidity, uid)
            return
        try:
            status = await self.importer(raw, mailbox, uidvalidity, uid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the mail stays on the server and is retried
            attempts = (known["attempts"] if known else 0) + 1
            error = f"{type(exc).__name__}: {exc}"[:2000]
            final = attempts >= self.cfg.max_failures
            await self._record(pid, mailbox, uidvalidity, uid, "failed" if final else "retry", attempts, error)
            if final:
                log.error("IMAP %s UID %s (%s) failed to import %s times and was moved to %s for a supervisor: %s",
                          mailbox, uid, pid, attempts, self.cfg.failed_folder, error)
                await self._move(client, uid, self.cfg.failed_folder)
            else:
                log.warning("IMAP %s UID %s failed to import (attempt %s of %s), it stays in the mailbox: %s",
                            mailbox, uid, attempts, self.cfg.max_failures, error)
            if advance:
                await self._advance(mailbox, uidvalidity, uid)
            return
        await self._record(pid, mailbox, uidvalidity, uid, status, (known["attempts"] if known else 0), None)
        if advance:
            await self._advance(mailbox, uidvalidity, uid)
        if self.cfg.processed_folder:
            await self._move(client, uid, self.cfg.processed_folder)

    async def _move(self, client: aioimaplib.IMAP4, uid: int, folder: str) -> None:
        target = self._folder(folder)
        if client.has_capability("MOVE"):
            res = await self._cmd(client.uid("move", str(uid), target), "UID MOVE")
        else:
            res = await self._cmd(client.uid("copy", str(uid), target), "UID COPY")
            if res.result == "OK" and client.has_capability("UIDPLUS"):
                await self._cmd(client.uid("store", str(uid), "+FLAGS", r"(\Deleted)"), "UID STORE")
                await self._cmd(client.uid("expunge", str(uid)), "UID EXPUNGE")
        if res.result != "OK":
            log.warning("IMAP: moving UID %s to %s failed (%s); it stays where it is", uid, folder, _text(res.lines))

    # ------------------------------------------------------------ bookkeeping
    async def _state(self, mailbox: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(email_mailbox_state).where(
                email_mailbox_state.c.account == self.cfg.account, email_mailbox_state.c.mailbox == mailbox,
            ))).mappings().first()
        return dict(row) if row else None

    async def _save_state(self, mailbox: str, uidvalidity: int, last_uid: int, exists: bool) -> None:
        now = self.clock.now()
        async with self.engine.begin() as conn:
            if exists:
                await conn.execute(update(email_mailbox_state).where(
                    email_mailbox_state.c.account == self.cfg.account, email_mailbox_state.c.mailbox == mailbox,
                ).values(uidvalidity=uidvalidity, last_uid=last_uid, updated_at=now))
            else:
                await conn.execute(insert_ignore(conn, email_mailbox_state).values(
                    account=self.cfg.account, mailbox=mailbox, uidvalidity=uidvalidity, last_uid=last_uid,
                    updated_at=now))

    async def _advance(self, mailbox: str, uidvalidity: int, uid: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(email_mailbox_state).where(
                email_mailbox_state.c.account == self.cfg.account, email_mailbox_state.c.mailbox == mailbox,
                email_mailbox_state.c.uidvalidity == uidvalidity, email_mailbox_state.c.last_uid < uid,
            ).values(last_uid=uid, updated_at=self.clock.now()))

    async def _known(self, pid: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(email_messages).where(
                email_messages.c.direction == "in", email_messages.c.message_id == pid,
            ))).mappings().first()
        return dict(row) if row else None

    async def _retry_uids(self, mailbox: str, uidvalidity: int) -> list[int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(email_messages.c.uid).where(
                email_messages.c.direction == "in", email_messages.c.mailbox == mailbox,
                email_messages.c.uidvalidity == uidvalidity, email_messages.c.status == "retry",
            ))).all()
        return [int(r[0]) for r in rows if r[0] is not None]

    async def _forget_retry(self, mailbox: str, uidvalidity: int, uid: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(email_messages).where(
                email_messages.c.mailbox == mailbox, email_messages.c.uidvalidity == uidvalidity,
                email_messages.c.uid == uid, email_messages.c.status == "retry",
            ).values(status="gone", updated_at=self.clock.now()))

    async def _record(self, pid: str, mailbox: str, uidvalidity: int, uid: int, status: str, attempts: int,
                      error: str | None) -> None:
        now = self.clock.now()
        async with self.engine.begin() as conn:
            inserted = (await conn.execute(insert_ignore(conn, email_messages).values(
                direction="in", message_id=pid, status=status, mailbox=mailbox, uidvalidity=uidvalidity, uid=uid,
                attempts=attempts, last_error=error, created_at=now, updated_at=now,
            ).returning(email_messages.c.id))).first()
            if inserted is None:
                await conn.execute(update(email_messages).where(
                    email_messages.c.direction == "in", email_messages.c.message_id == pid,
                ).values(status=status, mailbox=mailbox, uidvalidity=uidvalidity, uid=uid, attempts=attempts,
                         last_error=error, updated_at=now))


# ------------------------------------------------------------------ response parsing
def _text(lines: list[Any]) -> str:
    return " ".join(bytes(x).decode("utf-8", "replace") for x in lines if isinstance(x, bytes | bytearray))[:300]


def _uidvalidity(lines: list[Any]) -> int:
    for line in lines:
        m = re.search(rb"UIDVALIDITY (\d+)", bytes(line))
        if m:
            return int(m.group(1))
    raise RuntimeError("the IMAP server sent no UIDVALIDITY on SELECT")


def _uidnext(lines: list[Any]) -> int:
    for line in lines:
        m = re.search(rb"UIDNEXT (\d+)", bytes(line))
        if m:
            return int(m.group(1))
    return 1


def _exists(lines: list[Any]) -> int:
    for line in lines:
        m = re.match(rb"(\d+) EXISTS", bytes(line))
        if m:
            return int(m.group(1))
    return 0


def _numbers(lines: list[Any]) -> list[int]:
    out: list[int] = []
    for line in lines:
        b = bytes(line).strip()
        if b.upper().startswith(b"SEARCH"):
            b = b[6:]
        if b and all(part.isdigit() for part in b.split()):
            out.extend(int(p) for p in b.split())
    return out


def _literal(lines: list[Any]) -> bytes | None:
    for line in lines:
        if isinstance(line, bytearray):
            return bytes(line)
    return None
