"""Database access for the knowledge base (SQLAlchemy Core, both SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from knowledge_base.importer import ArticleInput
from knowledge_base.models import kb_articles, kb_categories, kb_queries, kb_state
from knowledge_base.ranker import Doc


async def current_version(conn: AsyncConnection) -> int:
    v = (await conn.execute(select(kb_state.c.version).where(kb_state.c.id == 1))).scalar_one_or_none()
    return int(v or 0)


async def bump_version(conn: AsyncConnection, now: datetime) -> int:
    res = await conn.execute(
        update(kb_state).where(kb_state.c.id == 1).values(version=kb_state.c.version + 1, updated_at=now)
    )
    if res.rowcount == 0:
        await conn.execute(kb_state.insert().values(id=1, version=1, updated_at=now))
    return await current_version(conn)


async def article_count(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(kb_articles))).scalar_one())


class VersionConflict(Exception):
    """The article changed (or appeared) since the editor read it."""


async def upsert_article(conn: AsyncConnection, art: ArticleInput, now: datetime,
                         expected_version: int | None = None) -> str:
    """Insert or update by external id: returns ``created``, ``updated`` or ``unchanged``.

    With ``expected_version`` the update only happens while the stored version is still that one (an editor's
    optimistic lock); otherwise VersionConflict is raised.
    """
    row = (
        await conn.execute(
            select(kb_articles.c.id, kb_articles.c.content_hash, kb_articles.c.version)
            .where(kb_articles.c.external_id == art.external_id)
        )
    ).first()
    values = dict(title=art.title, body=art.body, answer=art.answer, category=art.category, language=art.language,
                  tags=list(art.tags), questions=list(art.questions), published=art.published,
                  content_hash=art.content_hash, updated_at=now)
    await _ensure_category(conn, art, now)
    if row is None:
        await conn.execute(kb_articles.insert().values(external_id=art.external_id, version=1, views=0, helpful=0,
                                                       unhelpful=0, created_at=now, **values))
        return "created"
    if expected_version is not None and row.version != expected_version:
        raise VersionConflict(f"article {art.external_id!r} is at version {row.version}, not {expected_version}")
    if row.content_hash == art.content_hash:
        return "unchanged"
    res = await conn.execute(update(kb_articles).where(kb_articles.c.id == row.id,
                                                       kb_articles.c.version == row.version)
                             .values(version=row.version + 1, **values))
    if res.rowcount == 0:
        raise VersionConflict(f"article {art.external_id!r} was changed by someone else meanwhile")
    return "updated"


async def _ensure_category(conn: AsyncConnection, art: ArticleInput, now: datetime) -> None:
    exists = (
        await conn.execute(
            select(kb_categories.c.id, kb_categories.c.name)
            .where(kb_categories.c.slug == art.category, kb_categories.c.language == art.language)
        )
    ).first()
    if exists is None:
        await conn.execute(kb_categories.insert().values(slug=art.category, language=art.language,
                                                         name=art.category_name, description="", position=0,
                                                         created_at=now))
    elif exists.name != art.category_name and art.category_name.lower() != art.category.replace("-", " "):
        await conn.execute(update(kb_categories).where(kb_categories.c.id == exists.id)
                           .values(name=art.category_name))


async def published_docs(conn: AsyncConnection) -> list[Doc]:
    rows = (
        await conn.execute(select(kb_articles).where(kb_articles.c.published.is_(True)).order_by(kb_articles.c.id))
    ).mappings().all()
    return [
        Doc(id=r["external_id"], language=r["language"], title=r["title"], body=r["body"],
            questions=tuple(r["questions"] or ()), category=r["category"], tags=tuple(r["tags"] or ()),
            answer=r["answer"])
        for r in rows
    ]


async def get_article(conn: AsyncConnection, external_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(kb_articles).where(kb_articles.c.external_id == external_id))).mappings().first()
    return dict(row) if row else None


async def list_articles(conn: AsyncConnection, *, language: str | None = None, category: str | None = None,
                        published: bool | None = None, text: str | None = None,
                        limit: int = 500) -> list[dict[str, Any]]:
    """Articles for the editor's list, drafts included, newest change first."""
    q = select(kb_articles.c.external_id, kb_articles.c.title, kb_articles.c.language, kb_articles.c.category,
               kb_articles.c.published, kb_articles.c.version, kb_articles.c.views, kb_articles.c.helpful,
               kb_articles.c.unhelpful, kb_articles.c.updated_at)
    if language:
        q = q.where(kb_articles.c.language == language)
    if category:
        q = q.where(kb_articles.c.category == category)
    if published is not None:
        q = q.where(kb_articles.c.published.is_(published))
    if text:
        needle = text.lower()
        q = q.where(func.lower(kb_articles.c.title).contains(needle, autoescape=True)
                    | func.lower(kb_articles.c.external_id).contains(needle, autoescape=True))
    rows = (await conn.execute(q.order_by(kb_articles.c.updated_at.desc(), kb_articles.c.id.desc())
                               .limit(limit))).mappings().all()
    return [dict(r) for r in rows]


async def all_categories(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every category in every language (drafts' categories too), for the editor."""
    rows = (await conn.execute(select(kb_categories.c.slug, kb_categories.c.language, kb_categories.c.name)
                               .order_by(kb_categories.c.language, kb_categories.c.name))).mappings().all()
    return [dict(r) for r in rows]


async def categories(conn: AsyncConnection, language: str) -> list[dict[str, Any]]:
    counts = (
        select(kb_articles.c.category, func.count().label("n"))
        .where(kb_articles.c.language == language, kb_articles.c.published.is_(True))
        .group_by(kb_articles.c.category)
        .subquery()
    )
    rows = (
        await conn.execute(
            select(kb_categories, counts.c.n)
            .join(counts, counts.c.category == kb_categories.c.slug)
            .where(kb_categories.c.language == language)
            .order_by(kb_categories.c.position, kb_categories.c.name)
        )
    ).mappings().all()
    return [dict(r) for r in rows]


async def articles_in(conn: AsyncConnection, language: str, category: str | None = None,
                      limit: int = 200) -> list[dict[str, Any]]:
    q = select(kb_articles.c.external_id, kb_articles.c.title, kb_articles.c.answer, kb_articles.c.category,
               kb_articles.c.views).where(kb_articles.c.language == language, kb_articles.c.published.is_(True))
    if category:
        q = q.where(kb_articles.c.category == category)
    rows = (await conn.execute(q.order_by(kb_articles.c.title).limit(limit))).mappings().all()
    return [dict(r) for r in rows]


async def category(conn: AsyncConnection, slug: str, language: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(kb_categories).where(kb_categories.c.slug == slug, kb_categories.c.language == language)
        )
    ).mappings().first()
    return dict(row) if row else None


async def log_query(conn: AsyncConnection, *, text: str, language: str, top_article: str | None, score: float,
                    outcome: str, conversation_id: int | None, now: datetime) -> None:
    await conn.execute(kb_queries.insert().values(text=text[:1000], language=language, top_article=top_article,
                                                  score=float(score), outcome=outcome,
                                                  conversation_id=conversation_id, created_at=now))


async def count_view(conn: AsyncConnection, external_id: str) -> None:
    await conn.execute(update(kb_articles).where(kb_articles.c.external_id == external_id)
                       .values(views=kb_articles.c.views + 1))


async def record_feedback(conn: AsyncConnection, external_id: str, helpful: bool) -> None:
    col = kb_articles.c.helpful if helpful else kb_articles.c.unhelpful
    await conn.execute(update(kb_articles).where(kb_articles.c.external_id == external_id)
                       .values({col.name: col + 1}))


async def gap_queries(conn: AsyncConnection, since: datetime | None = None,
                      outcomes: tuple[str, ...] = ("none", "offered", "unhelpful")) -> list[dict[str, Any]]:
    q = select(kb_queries).where(kb_queries.c.outcome.in_(outcomes))
    if since is not None:
        q = q.where(kb_queries.c.created_at >= since)
    rows = (await conn.execute(q.order_by(kb_queries.c.id.desc()).limit(20_000))).mappings().all()
    return [dict(r) for r in rows]
