"""The public help centre at ``/help``: categories, articles, search, language switch. Server-rendered."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from markdown_it import MarkdownIt

from knowledge_base import store

if TYPE_CHECKING:
    from bot.runtime import Runtime
    from knowledge_base.service import KnowledgeBase

TEMPLATES = Path(__file__).resolve().parent / "templates"
LANGS = ("id", "en")
MAX_QUERY = 300

UI: dict[str, dict[str, str]] = {
    "id": {
        "title": "Pusat Bantuan", "search": "Cari", "search_label": "Cari artikel bantuan",
        "placeholder": "Contoh: jam buka klinik", "categories": "Kategori", "articles": "artikel",
        "results_for": "Hasil pencarian untuk", "no_results": "Tidak ada artikel yang cocok. Coba kata lain, "
        "atau hubungi kami lewat chat.", "back": "Kembali ke Pusat Bantuan", "language": "Bahasa",
        "updated": "Diperbarui", "not_found": "Artikel tidak ditemukan", "empty": "Belum ada artikel.",
        "skip": "Lewati ke konten", "helpful": "Apakah artikel ini membantu?", "yes": "Ya", "no": "Tidak",
        "thanks": "Terima kasih atas masukan Anda.", "popular": "Artikel", "version": "versi",
        "too_long": "Kata kunci terlalu panjang; kami memakai 300 karakter pertama.",
    },
    "en": {
        "title": "Help Centre", "search": "Search", "search_label": "Search help articles",
        "placeholder": "For example: opening hours", "categories": "Categories", "articles": "articles",
        "results_for": "Search results for", "no_results": "No matching articles. Try other words, or "
        "contact us through the chat.", "back": "Back to the Help Centre", "language": "Language",
        "updated": "Updated", "not_found": "Article not found", "empty": "No articles yet.",
        "skip": "Skip to content", "helpful": "Was this article helpful?", "yes": "Yes", "no": "No",
        "thanks": "Thank you for your feedback.", "popular": "Articles", "version": "version",
        "too_long": "The search was too long; we used its first 300 characters.",
    },
}

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True)


def render_markdown(text: str) -> str:
    """Markdown → HTML with raw HTML disabled (escaped) and unsafe link schemes refused by markdown-it."""
    return _md.render(text)


KB_KEY: web.AppKey[Any] = web.AppKey("loket.kb", object)


def _lang(request: web.Request) -> str:
    q = request.query.get("lang")
    if q in LANGS:
        return q
    c = request.cookies.get("loket_help_lang")
    if c in LANGS:
        return c
    accept = request.headers.get("Accept-Language", "").lower()
    return "en" if accept.startswith("en") else "id"


def _render(request: web.Request, template: str, lang: str, status: int = 200, **ctx: Any) -> web.Response:
    def switch_url(target: str) -> str:
        params = {k: v for k, v in request.query.items() if k != "lang"}
        params["lang"] = target
        return f"{request.path}?{urlencode(params)}"

    html = _env.get_template(template).render(lang=lang, ui=UI[lang], langs=LANGS, switch_url=switch_url,
                                              **ctx)
    resp = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
    resp.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'self'"
    )
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    if request.query.get("lang") in LANGS:
        resp.set_cookie("loket_help_lang", lang, max_age=365 * 86400, httponly=True, samesite="Lax", path="/help")
    return resp


async def home(request: web.Request) -> web.Response:
    kb: KnowledgeBase = request.app[KB_KEY]
    lang = _lang(request)
    async with kb.engine.connect() as conn:
        cats = await store.categories(conn, lang)
        arts = await store.articles_in(conn, lang, limit=500)
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for a in arts:
        by_cat.setdefault(a["category"], []).append(a)
    return _render(request, "home.html", lang, categories=cats, by_cat=by_cat)


async def category_page(request: web.Request) -> web.Response:
    kb: KnowledgeBase = request.app[KB_KEY]
    lang = _lang(request)
    slug = request.match_info["slug"]
    async with kb.engine.connect() as conn:
        cat = await store.category(conn, slug, lang)
        arts = await store.articles_in(conn, lang, slug) if cat else []
    if cat is None:
        return _render(request, "not_found.html", lang, status=404)
    return _render(request, "category.html", lang, category=cat, articles=arts)


async def article_page(request: web.Request) -> web.Response:
    kb: KnowledgeBase = request.app[KB_KEY]
    ext_id = request.match_info["article_id"]
    async with kb.engine.connect() as conn:
        art = await store.get_article(conn, ext_id)
        if art is None or not art["published"]:
            return _render(request, "not_found.html", _lang(request), status=404)
        cat = await store.category(conn, art["category"], art["language"])
    if request.method == "POST":
        data = await request.post()
        helpful = data.get("helpful") == "yes"
        async with kb.engine.begin() as conn:
            await store.record_feedback(conn, ext_id, helpful)
        raise web.HTTPSeeOther(f"/help/articles/{ext_id}?lang={art['language']}&thanks=1")
    lang = art["language"]
    if request.query.get("lang") in LANGS and request.query["lang"] != lang:
        lang = request.query["lang"]
    async with kb.engine.begin() as conn:
        await store.count_view(conn, ext_id)
    return _render(request, "article.html", lang, article=art, category=cat,
                   body_html=render_markdown(art["body"]), thanks=request.query.get("thanks") == "1")


async def search_page(request: web.Request) -> web.Response:
    kb: KnowledgeBase = request.app[KB_KEY]
    lang = _lang(request)
    raw = request.query.get("q", "")
    q = raw.strip()[:MAX_QUERY]
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    if q:
        res = kb.ranker.search(q, lang, k=10, fallback=False)
        for h in res.hits:
            doc = kb.ranker.docs.get(h.id)
            if doc is not None and h.score >= 0.05:
                results.append({"id": doc.id, "title": doc.title, "answer": doc.answer, "language": doc.language})
    elapsed = (time.perf_counter() - t0) * 1000
    return _render(request, "search.html", lang, q=q, results=results, too_long=len(raw.strip()) > MAX_QUERY,
                   elapsed_ms=elapsed)


async def style(request: web.Request) -> web.StreamResponse:
    resp = web.FileResponse(TEMPLATES / "help.css")
    resp.headers["Cache-Control"] = "public, max-age=3600"
    return resp


def install(rt: Runtime, kb: KnowledgeBase) -> None:
    rt.app[KB_KEY] = kb
    rt.app.router.add_get("/help", home)
    rt.app.router.add_get("/help/", home)
    rt.app.router.add_get("/help/help.css", style)
    rt.app.router.add_get("/help/search", search_page)
    rt.app.router.add_get("/help/categories/{slug}", category_page)
    rt.app.router.add_route("GET", "/help/articles/{article_id}", article_page)
    rt.app.router.add_route("POST", "/help/articles/{article_id}", article_page)
