"""Email channel tables: where each mailbox's IMAP sync stands, and every mail seen or sent (dedup, threading,
bounce lookup, import failures for supervisors)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import BigInteger, Index, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import TZ, Base, BigId


class EmailMailboxState(Base):
    """One IMAP mailbox: the UIDVALIDITY we synced under and the highest UID handled."""

    __tablename__ = "email_mailbox_state"
    __table_args__ = (UniqueConstraint("account", "mailbox", name="uq_email_mailbox"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account: Mapped[str] = mapped_column(String(320))  # user@host
    mailbox: Mapped[str] = mapped_column(String(255))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(TZ)


class EmailMessage(Base):
    """A mail in (imported, bounce, auto reply, ignored, retrying, failed) or out (sent by Loket)."""

    __tablename__ = "email_messages"
    __table_args__ = (
        UniqueConstraint("direction", "message_id", name="uq_email_direction_message_id"),
        Index("ix_email_messages_mailbox_status", "mailbox", "uidvalidity", "status"),
        Index("ix_email_messages_address", "address", "direction", "created_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    direction: Mapped[str] = mapped_column(String(4))  # in | out
    message_id: Mapped[str] = mapped_column(String(255))  # Message-ID, or sha256:<hex> of the raw mail
    status: Mapped[str] = mapped_column(String(24))  # imported|auto_reply|bounce|ignored|retry|failed|sent
    kind: Mapped[str | None] = mapped_column(String(24))
    address: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(String(500))
    mailbox: Mapped[str | None] = mapped_column(String(255))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uid: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    author: Mapped[str | None] = mapped_column(String(16))  # out: bot | agent | system
    loket_message_id: Mapped[int | None] = mapped_column(BigId)  # messages.id of our outbound message
    conversation_id: Mapped[int | None] = mapped_column(BigId)
    raw_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)


email_mailbox_state = cast(Table, EmailMailboxState.__table__)
email_messages = cast(Table, EmailMessage.__table__)
