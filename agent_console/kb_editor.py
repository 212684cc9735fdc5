"""The knowledge-base editor at /console/kb (supervisors and admins).

List articles (drafts too) by language, category, status and title; write one in Markdown with a live preview
rendered on the server by the help centre's own renderer (``knowledge_base.web.render_markdown``: raw HTML
escaped, unsafe links refused), save it as a draft, publish or unpublish it. Saving goes through the running
``KnowledgeBase`` (``save_article``): the same validation as ``loket kb import`` (``build_article``), the
version goes up on every change, this process's index is rebuilt at once and other processes follow
``kb_state.version``. Every change is audited. An editor that saves over someone else's newer version gets
a 409 with their own text kept on the page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent_console import auth
from knowledge_base import store
from knowledge_base.importer import (
    LANGUAGES,
    MAX_BODY_CHARS,
    ArticleError,
    build_article,
    first_paragraph,
    slugify,
)
from knowledge_base.web import render_markdown

if TYPE_CHECKING:
    from agent_console.web import Console
    from knowledge_base.service import KnowledgeBase

ROLE = "supervisor"
STATUSES = ("all", "published", "draft")
ACTIONS = ("save", "publish", "unpublish", "preview")


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def form_fields(data: Any) -> dict[str, str]:
    """The editor's fields as typed (kept on the page when something is wrong)."""
    keys = ("id", "title", "language", "category", "tags", "questions", "answer", "body", "version")
    return {k: str(data.get(k) or "") for k in keys}


def article_from(fields: dict[str, str], published: bool) -> Any:
    """An ``ArticleInput`` from the editor's fields; raises ArticleError with the reason."""
    ext_id = fields["id"].strip() or slugify(fields["title"])
    meta = {"id": ext_id, "title": fields["title"], "language": fields["language"],
            "category": fields["category"].strip() or "umum", "tags": fields["tags"],
            "questions": _lines(fields["questions"]), "answer": fields["answer"], "published": published}
    if len(fields["body"]) > MAX_BODY_CHARS:
        raise ArticleError(f"body is longer than {MAX_BODY_CHARS} characters")
    return build_article(meta, fields["body"])


def fields_of(article: dict[str, Any]) -> dict[str, str]:
    return {"id": article["external_id"], "title": article["title"], "language": article["language"],
            "category": article["category"], "tags": ", ".join(article["tags"] or []),
            "questions": "\n".join(article["questions"] or []),
            # an answer that is just the first paragraph stays empty, so it follows later edits of the body
            "answer": "" if article["answer"] == first_paragraph(article["body"]) else article["answer"] or "",
            "body": article["body"], "version": str(article["version"])}


def _summary(article: dict[str, Any] | None) -> dict[str, Any] | None:
    if article is None:
        return None
    return {"title": article["title"], "version": article["version"], "published": article["published"],
            "language": article["language"], "category": article["category"]}


class KbEditor:
    def __init__(self, console: Console) -> None:
        self.console = console

    def kb(self) -> KnowledgeBase:
        kb = self.console.rt.services.get("kb")
        if kb is None:
            raise web.HTTPNotFound(text="the knowledge_base component is not loaded in this process")
        return kb  # type: ignore[no-any-return]

    async def allowed(self, request: web.Request, me: dict[str, Any]) -> web.Response | None:
        if auth.role_at_least(me["role"], ROLE):
            return None
        return await self.console.forbidden(request, me, "kb")

    # ------------------------------------------------------------ list
    async def list_page(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        if (denied := await self.allowed(request, me)) is not None:
            return denied
        q = request.query
        status = str(q.get("status")) if q.get("status") in STATUSES else "all"
        language = str(q.get("language")) if q.get("language") in LANGUAGES else None
        async with self.kb().engine.connect() as conn:
            rows = await store.list_articles(conn, language=language, category=q.get("category") or None,
                                             published={"published": True, "draft": False}.get(status),
                                             text=(q.get("q") or "").strip()[:200] or None)
            cats = await store.all_categories(conn)
        return self.console.render(request, "kb_list.html", me=me, rows=rows, categories=cats, q=q,
                                   filter_status=status, languages=LANGUAGES, statuses=STATUSES,
                                   saved=q.get("saved"))

    # ------------------------------------------------------------ edit
    async def edit_page(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        if (denied := await self.allowed(request, me)) is not None:
            return denied
        ext_id = request.match_info.get("article_id")
        article = None
        if ext_id is not None:
            async with self.kb().engine.connect() as conn:
                article = await store.get_article(conn, ext_id)
            if article is None:
                raise web.HTTPNotFound(text=f"no article {ext_id!r}")
            fields = fields_of(article)
        else:
            fields = {k: "" for k in ("id", "title", "category", "tags", "questions", "answer", "body", "version")}
            wanted = request.query.get("language")
            fields["language"] = wanted if wanted in LANGUAGES else LANGUAGES[0]
        return await self.editor(request, me, fields, article, saved=request.query.get("saved"))

    async def editor(self, request: web.Request, me: dict[str, Any], fields: dict[str, str],
                     article: dict[str, Any] | None, *, status: int = 200, error: str | None = None,
                     saved: str | None = None, theirs: dict[str, Any] | None = None) -> web.Response:
        async with self.kb().engine.connect() as conn:
            cats = await store.all_categories(conn)
        return self.console.render(request, "kb_edit.html", status=status, me=me, f=fields, article=article,
                                   categories=cats, languages=LANGUAGES, error=error, saved=saved, theirs=theirs,
                                   preview_html=render_markdown(fields["body"]))

    async def save(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        if (denied := await self.allowed(request, me)) is not None:
            return denied
        data = await self.console.form(request, me)
        fields = form_fields(data)
        action = str(data.get("action") or "save")
        if action not in ACTIONS:
            raise web.HTTPBadRequest(text=f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
        ext_id = request.match_info.get("article_id")
        kb = self.kb()
        async with kb.engine.connect() as conn:
            before = await store.get_article(conn, ext_id) if ext_id else None
        if ext_id is not None and before is None:
            raise web.HTTPNotFound(text=f"no article {ext_id!r}")
        if ext_id is not None:
            fields["id"] = ext_id  # the id of an existing article does not change
        if action == "preview":
            return await self.editor(request, me, fields, before)
        published = {"publish": True, "unpublish": False}.get(action, bool(before and before["published"]))
        try:
            art = article_from(fields, published)
        except ArticleError as exc:
            return await self.editor(request, me, fields, before, status=400, error=str(exc))
        expected = int(fields["version"]) if fields["version"].isdigit() else None
        try:
            outcome, version = await kb.save_article(art, create=ext_id is None, expected_version=expected)
        except store.VersionConflict as exc:
            return await self.conflict(request, me, fields, before, str(exc))
        verb = "create" if before is None else {"publish": "publish", "unpublish": "unpublish"}.get(action, "update")
        await self.console.audit(me, f"kb.article.{verb}", request, object_type="kb_article",
                                 object_id=art.external_id, before=_summary(before),
                                 after={**(_summary({"title": art.title, "version": version, "published": published,
                                                     "language": art.language, "category": art.category}) or {}),
                                        "outcome": outcome})
        raise web.HTTPSeeOther(f"/console/kb/a/{art.external_id}?saved={outcome}")

    async def conflict(self, request: web.Request, me: dict[str, Any], fields: dict[str, str],
                       before: dict[str, Any] | None, reason: str) -> web.Response:
        """409: the typed text stays in the form; an update also shows the newer stored version beside it."""
        if before is None:
            return await self.editor(request, me, fields, None, status=409, error=reason)
        async with self.kb().engine.connect() as conn:
            current = await store.get_article(conn, before["external_id"])
        if current is None:
            return await self.editor(request, me, {**fields, "id": ""}, None, status=409, error=reason)
        fields = {**fields, "version": str(current["version"])}  # saving again replaces the newer version
        return await self.editor(request, me, fields, current, status=409, error=reason, theirs=current)

    async def preview(self, request: web.Request, me: dict[str, Any]) -> web.Response:
        """The live preview: the body rendered by the help centre's renderer (CSRF-checked POST)."""
        if (denied := await self.allowed(request, me)) is not None:
            return denied
        data = await self.console.form(request, me)
        body = str(data.get("body") or "")[:MAX_BODY_CHARS]
        return self.console.render(request, "kb_preview.html", me=me, title=str(data.get("title") or "")[:300],
                                   preview_html=render_markdown(body))


def install(console: Console, authed: Any) -> None:
    editor = KbEditor(console)
    r = console.rt.app.router
    r.add_get("/console/kb", authed(editor.list_page))
    r.add_get("/console/kb/new", authed(editor.edit_page))
    r.add_post("/console/kb/new", authed(editor.save))
    r.add_post("/console/kb/preview", authed(editor.preview))
    r.add_get("/console/kb/a/{article_id}", authed(editor.edit_page))
    r.add_post("/console/kb/a/{article_id}", authed(editor.save))
