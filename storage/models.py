"""Core domain model (DESIGN §2). Features add their tables in their own modules on the same ``Base``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage.db import constant

# BIGINT primary keys on PostgreSQL, INTEGER (rowid alias, autoincrement) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")
TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: TZ}


class Inbox(Base):
    """One channel account: a WhatsApp sender, a Telegram bot, a mailbox, a web chat widget."""

    __tablename__ = "inboxes"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    default_flow: Mapped[str | None] = mapped_column(String(200))
    default_team_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("teams.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TZ)


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    display_name: Mapped[str | None] = mapped_column(String(300))
    language: Mapped[str] = mapped_column(String(8), default="id")
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Jakarta")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    opted_out_at: Mapped[datetime | None] = mapped_column(TZ)
    merged_into_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id"))
    created_at: Mapped[datetime] = mapped_column(TZ)
    last_seen_at: Mapped[datetime | None] = mapped_column(TZ)


class Identity(Base):
    """A way to reach a customer. Unique per (channel, address)."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("channel", "address", name="uq_identity_channel_address"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(300))
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    unreachable: Mapped[bool] = mapped_column(Boolean, default=False)
    unreachable_reason: Mapped[str | None] = mapped_column(Text)
    last_inbound_at: Mapped[datetime | None] = mapped_column(TZ)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZ)


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    business_hours: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZ)


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(16), default="agent")  # agent < supervisor < admin
    max_chats: Mapped[int] = mapped_column(Integer, default=5)
    presence: Mapped[str] = mapped_column(String(16), default="offline")  # online | away | offline
    presence_at: Mapped[datetime | None] = mapped_column(TZ)
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(8), default="id")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(TZ)


class TeamMember(Base):
    __tablename__ = "team_members"
    team_id: Mapped[int] = mapped_column(BigId, ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    agent_id: Mapped[int] = mapped_column(BigId, ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_identity_state", "identity_id", "state"),
        Index("ix_conversations_state_team", "state", "team_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id"), index=True)
    identity_id: Mapped[int] = mapped_column(BigId, ForeignKey("identities.id"))
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(24), default="bot")
    flow: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    language: Mapped[str | None] = mapped_column(String(8))
    team_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("teams.id", ondelete="SET NULL"))
    assignee_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("agents.id", ondelete="SET NULL"))
    priority: Mapped[str] = mapped_column(String(16), default="normal")  # low | normal | high | urgent
    labels: Mapped[list[Any]] = mapped_column(JSON, default=list)
    handover: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # why the bot handed over
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    queued_at: Mapped[datetime | None] = mapped_column(TZ)
    first_response_due: Mapped[datetime | None] = mapped_column(TZ)
    resolution_due: Mapped[datetime | None] = mapped_column(TZ)
    first_response_at: Mapped[datetime | None] = mapped_column(TZ)
    snoozed_until: Mapped[datetime | None] = mapped_column(TZ)
    resolved_at: Mapped[datetime | None] = mapped_column(TZ)
    csat_score: Mapped[int | None] = mapped_column(Integer)
    csat_comment: Mapped[str | None] = mapped_column(Text)
    last_message_at: Mapped[datetime | None] = mapped_column(TZ)
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "channel_message_id", name="uq_message_channel_id"),
        Index("ix_messages_conversation", "conversation_id", "id"),
        # PostgreSQL: a block-range index on the date (migration 0006_core). Messages are appended in time order
        # and never deleted, so a range of pages holds a narrow span of dates: the supervisor dashboard reads
        # only a window's pages, and a new row costs next to nothing (the newest range is summarised later, by
        # the upkeep pass's VACUUM). SQLite has no such index; a B-tree would cost every message an insertion.
        Index("ix_messages_created_brin", "created_at", postgresql_using="brin").ddl_if(dialect="postgresql"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(BigId, ForeignKey("conversations.id"))
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    direction: Mapped[str] = mapped_column(String(4))  # in | out
    author: Mapped[str] = mapped_column(String(16))  # customer | bot | agent | system
    agent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("agents.id", ondelete="SET NULL"))
    body: Mapped[str] = mapped_column(Text, default="")
    choices: Mapped[list[Any]] = mapped_column(JSON, default=list)
    attachments: Mapped[list[Any]] = mapped_column(JSON, default=list)
    purpose: Mapped[str | None] = mapped_column(String(64))
    channel_message_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="received")  # received|queued|sent|delivered|read|failed
    error: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZ)
    sent_at: Mapped[datetime | None] = mapped_column(TZ)
    delivered_at: Mapped[datetime | None] = mapped_column(TZ)


# Touchpoint kinds the supervisor dashboard counts, written once for its partial indexes and its queries, as
# literals: a generic plan of a prepared statement (PostgreSQL) cannot use a partial index for a kind given as a
# parameter.
SLA_BREACHED = text("kind = 'sla_breached'")
HANDOFFS = text("kind IN ('escalated', 'assigned')")


class Touchpoint(Base):
    """One line on the customer's timeline. Append-only.

    No foreign keys: every touchpoint is written in the transaction that writes (or has just read) the customer,
    conversation and message it names, and none of those rows is ever deleted (erasure anonymises, a merge moves
    touchpoints along with the rest). The checks cost two lookups and row locks per touchpoint, about four
    touchpoints per message, most of the database's work in a routing flush (migration 0004_core).
    """

    __tablename__ = "touchpoints"
    __table_args__ = (
        Index("ix_touchpoints_customer", "customer_id", "id"),
        # the console's round robin: each agent's last auto-assignment (migration 0005_core)
        Index("ix_touchpoints_auto_assigned", "actor", "id", postgresql_where=text("kind = 'assigned'"),
              sqlite_where=text("kind = 'assigned'")),
        # the supervisor dashboard's breaches and hand-overs of a window (migration 0006_core): partial, so the
        # other kinds (nearly every row) cost nothing to write
        Index("ix_touchpoints_sla_breached", "created_at", postgresql_where=SLA_BREACHED, sqlite_where=SLA_BREACHED),
        Index("ix_touchpoints_handoffs", "created_at", "conversation_id", postgresql_where=HANDOFFS,
              sqlite_where=HANDOFFS),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigId)
    conversation_id: Mapped[int | None] = mapped_column(BigId)
    message_id: Mapped[int | None] = mapped_column(BigId)
    kind: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str | None] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64), default="system")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZ)


# The queues' status indexes on PostgreSQL hold only the rows not yet finished (migration 0007_core): a message's
# inbox row goes in already ``done`` and its reply's outbox row ends ``sent``, so the indexes the claims and the
# per-conversation checks read stay as small as the work waiting, and a message costs PostgreSQL four fewer index
# insertions (bulk-measured: inbox inserts 2.5 -> 1.1 s, the outbox's updates to ``sent`` 2.6 -> 1.2 s per 200,000).
# A query that should use them names its statuses as constants (``storage.db.constant``): from a parameter a
# prepared statement's generic plan cannot tell that its rows are in the index. SQLite keeps whole indexes: it
# would use a partial one only for a query that repeats the index's own condition.
INBOX_UNFINISHED = text("status <> 'done'")
OUTBOX_UNFINISHED = text("status <> 'sent'")
# the statuses the claims and checks filter on, as constants (both queues say ``pending``; a reply is unsent
# while it is pending or being sent)
PENDING = constant("pending")
SENDING = constant("sending")
UNSENT = (PENDING, SENDING)


class InboxItem(Base):
    """Durable inbound work: persisted before the webhook is acknowledged."""

    __tablename__ = "inbox_items"
    __table_args__ = (
        UniqueConstraint("channel", "provider_message_id", name="uq_inbox_provider_id"),
        # PostgreSQL: only the rows still to do are indexed (migration 0007_core)
        Index("ix_inbox_status_id", "status", "id", postgresql_where=INBOX_UNFINISHED),
        Index("ix_inbox_key_status", "key", "status", "id", postgresql_where=INBOX_UNFINISHED),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(340))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(TZ)
    processed_at: Mapped[datetime | None] = mapped_column(TZ)


class OutboxItem(Base):
    """Durable outbound work: one row per message to send, claimed by the dispatcher."""

    __tablename__ = "outbox_items"
    __table_args__ = (
        Index("ix_outbox_status_id", "status", "id", postgresql_where=OUTBOX_UNFINISHED),
        Index("ix_outbox_key_status", "key", "status", "id", postgresql_where=OUTBOX_UNFINISHED),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(BigId, ForeignKey("messages.id"), unique=True)
    channel: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(340))
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending | sending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(TZ)
    locked_by: Mapped[str | None] = mapped_column(String(120))
    locked_until: Mapped[datetime | None] = mapped_column(TZ)
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(TZ)
    sent_at: Mapped[datetime | None] = mapped_column(TZ)


class AuditLog(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(80))
    object_type: Mapped[str | None] = mapped_column(String(40))
    object_id: Mapped[str | None] = mapped_column(String(80))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(TZ)


customers = cast(Table, Customer.__table__)
identities = cast(Table, Identity.__table__)
conversations = cast(Table, Conversation.__table__)
messages = cast(Table, Message.__table__)
touchpoints = cast(Table, Touchpoint.__table__)
inbox_items = cast(Table, InboxItem.__table__)
outbox_items = cast(Table, OutboxItem.__table__)
teams = cast(Table, Team.__table__)
agents = cast(Table, Agent.__table__)
team_members = cast(Table, TeamMember.__table__)
audit_log = cast(Table, AuditLog.__table__)
