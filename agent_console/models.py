"""Console tables the core lacks: sessions, login attempts, canned replies, notes, labels, SLA policies (default and per team)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import TZ, Base, BigId


class ConsoleSession(Base):
    """A signed-in browser. Only the SHA-256 of the random session id is stored."""

    __tablename__ = "console_sessions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    agent_id: Mapped[int] = mapped_column(BigId, ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(TZ)
    last_seen_at: Mapped[datetime] = mapped_column(TZ)
    expires_at: Mapped[datetime] = mapped_column(TZ)


class LoginAttempt(Base):
    __tablename__ = "console_login_attempts"
    __table_args__ = (Index("ix_console_login_email_at", "email", "created_at"),
                      Index("ix_console_login_ip_at", "ip", "created_at"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    ip: Mapped[str] = mapped_column(String(64))
    success: Mapped[bool] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(TZ)


class CannedReply(Base):
    __tablename__ = "console_canned_replies"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    shortcut: Mapped[str] = mapped_column(String(60), unique=True)
    body: Mapped[str] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(BigId, ForeignKey("agents.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TZ)


class ConversationNote(Base):
    """A private note: seen by agents only, never sent to the customer."""

    __tablename__ = "console_notes"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(BigId, ForeignKey("conversations.id", ondelete="CASCADE"),
                                                 index=True)
    agent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("agents.id", ondelete="SET NULL"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ)


class Label(Base):
    __tablename__ = "console_labels"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(60), unique=True)
    color: Mapped[str] = mapped_column(String(16), default="#5b6ee1")


class SlaPolicy(Base):
    """Targets per priority, in minutes. A missing row falls back to sla.DEFAULT_SLA."""

    __tablename__ = "console_sla_policies"
    priority: Mapped[str] = mapped_column(String(16), primary_key=True)
    first_response_minutes: Mapped[int] = mapped_column(Integer)
    resolution_minutes: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SlaTeamPolicy(Base):
    """A team's own targets for one priority; priorities without a row inherit ``console_sla_policies``."""

    __tablename__ = "console_sla_team_policies"
    team_id: Mapped[int] = mapped_column(BigId, ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    priority: Mapped[str] = mapped_column(String(16), primary_key=True)
    first_response_minutes: Mapped[int] = mapped_column(Integer)
    resolution_minutes: Mapped[int] = mapped_column(Integer)


console_sessions = cast(Table, ConsoleSession.__table__)
login_attempts = cast(Table, LoginAttempt.__table__)
canned_replies = cast(Table, CannedReply.__table__)
notes = cast(Table, ConversationNote.__table__)
labels = cast(Table, Label.__table__)
sla_policies = cast(Table, SlaPolicy.__table__)
sla_team_policies = cast(Table, SlaTeamPolicy.__table__)
