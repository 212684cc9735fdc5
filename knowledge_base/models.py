"""Knowledge base tables: articles, categories, the query log (for gaps) and a version counter (for reloads)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import TZ, Base, BigId


class KbCategory(Base):
    __tablename__ = "kb_categories"
    __table_args__ = (UniqueConstraint("slug", "language", name="uq_kb_category_slug_lang"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(120))
    language: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(TZ)


class KbArticle(Base):
    __tablename__ = "kb_articles"
    __table_args__ = (Index("ix_kb_articles_lang_pub", "language", "published"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text, default="")
    answer: Mapped[str] = mapped_column(Text, default="")  # short answer for chat
    category: Mapped[str] = mapped_column(String(120), default="")  # category slug
    language: Mapped[str] = mapped_column(String(8), default="id")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    questions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    published: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    content_hash: Mapped[str] = mapped_column(String(64), default="")
    views: Mapped[int] = mapped_column(Integer, default=0)
    helpful: Mapped[int] = mapped_column(Integer, default=0)
    unhelpful: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)


class KbQuery(Base):
    """One question the knowledge base was asked in chat, and what it did (gaps report)."""

    __tablename__ = "kb_queries"
    __table_args__ = (Index("ix_kb_queries_outcome_time", "outcome", "created_at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(8), default="id")
    top_article: Mapped[str | None] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float, default=0.0)
    outcome: Mapped[str] = mapped_column(String(16))  # answered | offered | none | unhelpful | helpful
    conversation_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    created_at: Mapped[datetime] = mapped_column(TZ)


class KbState(Base):
    """A single row whose ``version`` goes up on every content change; other processes poll it to reload."""

    __tablename__ = "kb_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime | None] = mapped_column(TZ)


kb_categories = cast(Table, KbCategory.__table__)
kb_articles = cast(Table, KbArticle.__table__)
kb_queries = cast(Table, KbQuery.__table__)
kb_state = cast(Table, KbState.__table__)
