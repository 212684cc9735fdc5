"""The knowledge base in chat: answer, offer the top choices, or offer a human; then ask for feedback.

``kb_answer(ctx, query)`` is the service the router step and the flow engine's ``search_kb`` node call.
A pending "Was this helpful?" question lives in the conversation meta (``kb_pending``), so the next
"ya"/"tidak"/"1"/"2" (typed or a button) is read as feedback. Effects only: query log, view and feedback
counts are Custom effects applied in the pipeline's transaction.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from bot.effects import Custom, Decision, Send, Touch, UpdateConversation
from bot.messages import Choice, Reply
from bot.router import RouteContext
from bot.texts import register, t
from knowledge_base import store
from knowledge_base.analyzer import analyze, is_small_talk, is_thanks
from knowledge_base.ranker import Result

ARTICLE_PREFIX = "kb:article:"
HELPFUL = "kb:helpful"
UNHELPFUL = "kb:unhelpful"
YES_WORDS = {"ya", "iya", "iyaa", "yes", "y", "yup", "yap", "betul", "benar", "membantu", "sangat membantu",
             "sudah", "udah", "sip", "mantap", "oke", "ok", "helpful", "terbantu"}
NO_WORDS = {"tidak", "tdk", "gak", "ga", "nggak", "enggak", "engga", "no", "nope", "n", "belum", "blm", "kurang",
            "tidak membantu", "gak membantu", "not helpful", "bukan"}

register({
    "kb.read_more": {"id": "Selengkapnya: {url}", "en": "Read more: {url}"},
    "kb.helpful_q": {"id": "Apakah ini membantu?", "en": "Was this helpful?"},
    "kb.yes": {"id": "Ya", "en": "Yes"},
    "kb.no": {"id": "Tidak", "en": "No"},
    "kb.thanks_feedback": {
        "id": "Terima kasih atas masukannya! Ada lagi yang bisa kami bantu?",
        "en": "Thank you for the feedback! Is there anything else we can help with?",
    },
    "kb.sorry_unhelpful": {
        "id": "Maaf jawabannya belum membantu. Mau bicara dengan petugas kami, atau tulis pertanyaan Anda "
              "dengan kata lain?",
        "en": "Sorry that did not help. Would you like to talk to a person, or ask in other words?",
    },
    "kb.offer": {
        "id": "Saya belum yakin. Apakah salah satu dari ini yang Anda maksud?",
        "en": "I am not sure yet. Is it one of these?",
    },
    "kb.none": {
        "id": "Maaf, saya belum menemukan jawaban untuk pertanyaan itu. Mau bicara dengan petugas kami?",
        "en": "Sorry, I could not find an answer to that. Would you like to talk to a person?",
    },
    "kb.none_choice": {"id": "Bicara dengan petugas", "en": "Talk to a person"},
    "kb.you_are_welcome": {
        "id": "Sama-sama! Ketik pertanyaan lain kapan saja.",
        "en": "You are welcome! Ask another question any time.",
    },
})


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _feedback_value(ctx: RouteContext) -> str | None:
    value = ctx.text.strip()
    if value in {HELPFUL, UNHELPFUL}:
        return value
    words = " ".join(re.findall(r"[^\W_]+", ctx.raw_text.lower()))
    if words in YES_WORDS:
        return HELPFUL
    if words in NO_WORDS:
        return UNHELPFUL
    return None


def article_url(ctx: RouteContext, article_id: str, language: str) -> str:
    settings = ctx.services.get("settings")
    base = (getattr(settings, "public_url", "") or "").rstrip("/")
    return f"{base}/help/articles/{quote(article_id)}?lang={language}"


def _has_words(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


async def kb_answer(ctx: RouteContext, query: str | None = None) -> Decision | None:
    kb = ctx.services.get("kb")
    if kb is None or not kb.ranker.docs:
        return None
    lang = ctx.language if ctx.language in {"id", "en"} else "id"
    pending = (ctx.conversation.meta or {}).get("kb_pending")
    if pending and query is None:
        fb = _feedback_value(ctx)
        if fb is not None:
            return feedback_decision(ctx, pending, fb == HELPFUL, lang)
    text = (query if query is not None else ctx.text).strip()
    clear: list[Any] = [UpdateConversation(meta={"kb_pending": None})] if pending else []
    if text.startswith(ARTICLE_PREFIX):
        article_id = text[len(ARTICLE_PREFIX):]
        doc = kb.ranker.docs.get(article_id)
        if doc is None:
            return None
        return answer_decision(ctx, doc, lang, query=ctx.raw_text, confidence=1.0, via="choice")
    if not text or text.lower() in {"agent", "menu"}:
        return None
    if not _has_words(text):
        return None  # emoji only / punctuation: not a question; the default step answers
    if is_small_talk(text):
        if is_thanks(text) and not (ctx.conversation.is_new or ctx.conversation.reopened):
            return Decision(clear).add(Send(Reply(t("kb.you_are_welcome", lang))))
        return None
    if not any(analyze(text, lng) for lng in ("id", "en")):
        return None
    result: Result = kb.search(text, lang)
    action = kb.decide(result)
    top = result.top
    if action == "answer" and top is not None:
        doc = kb.ranker.docs[top.id]
        return answer_decision(ctx, doc, lang, query=text, confidence=result.confidence, via="search",
                               prefix=clear)
    if action == "none" and query is None and (ctx.conversation.is_new or ctx.conversation.reopened):
        return None  # a first message we cannot answer gets the greeting with its menu and human choices
    log = Custom("kb.query", {"text": text, "language": result.language, "top_article": top.id if top else None,
                              "score": result.confidence, "outcome": "offered" if action == "offer" else "none"})
    if action == "offer":
        choices = [Choice(_short(h.title), ARTICLE_PREFIX + h.id) for h in result.hits[:3]]
        choices.append(Choice(t("kb.none_choice", lang), "agent"))
        return Decision(clear).add(
            log,
            Touch("kb_answer", {"query": text[:500], "outcome": "offered", "articles": [h.id for h in result.hits[:3]],
                                "confidence": round(result.confidence, 3)}),
            Send(Reply(t("kb.offer", lang), choices=tuple(choices), purpose="kb_offer")),
        )
    return Decision(clear).add(
        log,
        Touch("kb_answer", {"query": text[:500], "outcome": "none", "confidence": round(result.confidence, 3),
                            "closest": top.id if top else None}),
        Send(Reply(t("kb.none", lang), choices=(Choice(t("kb.none_choice", lang), "agent"),
                                                Choice(t("choice.menu", lang), "menu")), purpose="kb_none")),
    )


def answer_decision(ctx: RouteContext, doc: Any, lang: str, *, query: str, confidence: float, via: str,
                    prefix: list[Any] | None = None) -> Decision:
    url = article_url(ctx, doc.id, doc.language)
    answer = doc.answer or doc.title
    text = f"*{doc.title}*\n{answer}\n\n{t('kb.read_more', lang, url=url)}"
    return Decision(list(prefix or [])).add(
        Custom("kb.query", {"text": query, "language": doc.language, "top_article": doc.id, "score": confidence,
                            "outcome": "answered"}),
        Custom("kb.view", {"article": doc.id}),
        Touch("kb_answer", {"query": query[:500], "article": doc.id, "title": doc.title, "outcome": "answered",
                            "confidence": round(confidence, 3), "via": via}),
        Send(Reply(text, purpose="kb_answer", meta={"kb_article": doc.id, "url": url})),
        Send(Reply(t("kb.helpful_q", lang), choices=(Choice(t("kb.yes", lang), HELPFUL),
                                                     Choice(t("kb.no", lang), UNHELPFUL)),
                   purpose="kb_feedback")),
        UpdateConversation(meta={"kb_pending": {"article": doc.id, "query": query[:500],
                                                "asked_at": ctx.now.isoformat()}}),
    )


def feedback_decision(ctx: RouteContext, pending: dict[str, Any], helpful: bool, lang: str) -> Decision:
    article = str(pending.get("article") or "")
    decision = Decision().add(
        UpdateConversation(meta={"kb_pending": None}),
        Custom("kb.feedback", {"article": article, "helpful": helpful, "query": pending.get("query") or ""}),
        Touch("kb_feedback", {"article": article, "helpful": helpful, "query": pending.get("query")}),
    )
    if helpful:
        return decision.add(Send(Reply(t("kb.thanks_feedback", lang), purpose="kb_feedback_thanks")))
    return decision.add(Send(Reply(
        t("kb.sorry_unhelpful", lang),
        choices=(Choice(t("kb.none_choice", lang), "agent"), Choice(t("choice.menu", lang), "menu")),
        purpose="kb_unhelpful",
    )))


async def kb_step(ctx: RouteContext) -> Decision | None:
    """Router step at ORDER_KB: free text in a bot conversation goes to the knowledge base."""
    if ctx.conversation.state != "bot" or ctx.message.kind != "message":
        return None
    return await kb_answer(ctx)


# ---------------------------------------------------------------------- effect appliers (same transaction)
async def apply_query(actx: Any, eff: Custom) -> None:
    d = eff.data
    await store.log_query(actx.conn, text=str(d.get("text") or ""), language=str(d.get("language") or "id"),
                          top_article=d.get("top_article"), score=float(d.get("score") or 0.0),
                          outcome=str(d.get("outcome")), conversation_id=actx.conversation_id, now=actx.now)


async def apply_view(actx: Any, eff: Custom) -> None:
    await store.count_view(actx.conn, str(eff.data["article"]))


async def apply_feedback(actx: Any, eff: Custom) -> None:
    d = eff.data
    await store.record_feedback(actx.conn, str(d["article"]), bool(d["helpful"]))
    await store.log_query(actx.conn, text=str(d.get("query") or ""), language="id", top_article=str(d["article"]),
                          score=0.0, outcome="helpful" if d["helpful"] else "unhelpful",
                          conversation_id=actx.conversation_id, now=actx.now)
