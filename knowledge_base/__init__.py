"""Knowledge base: articles, Indonesian-first search, confidence-gated answers in chat, the public help centre.

``setup(rt)`` registers the router step (ORDER_KB), ``rt.services["kb"]`` (the live KnowledgeBase) and
``rt.services["kb_answer"]`` (async (ctx, query) -> Decision | None, used by the flow engine's ``search_kb``),
the effect appliers, the ``/help`` pages, the reload task and the demo import on start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("loket.kb")

DEMO_PATH = Path(__file__).resolve().parent / "demo"


def setup(rt: Runtime) -> None:
    from bot.router import ORDER_KB
    from knowledge_base import web
    from knowledge_base.chat import apply_feedback, apply_query, apply_view, kb_answer, kb_step
    from knowledge_base.service import KnowledgeBase

    kb = KnowledgeBase(rt.engine, rt.clock, rt.settings.env, long_running=rt.long_running)
    rt.services["kb"] = kb
    rt.services["kb_answer"] = kb_answer
    rt.router.add("kb", kb_step, ORDER_KB)
    rt.pipeline.appliers["kb.query"] = apply_query
    rt.pipeline.appliers["kb.view"] = apply_view
    rt.pipeline.appliers["kb.feedback"] = apply_feedback
    web.install(rt, kb)

    async def startup() -> None:
        if rt.role in {"all", "worker"}:
            source: Path | None = None
            if rt.settings.kb_path is not None:
                source = rt.settings.kb_path
            elif rt.settings.demo and await kb.is_empty():
                source = DEMO_PATH
            if source is not None:
                try:
                    res = await kb.import_path(source)
                    log.info("knowledge base import from %s: %d new, %d updated, %d unchanged, %d rejected",
                             source, res.created, res.updated, res.unchanged, len(res.rejected))
                    for r in res.rejected:
                        log.warning("knowledge base import rejected %s: %s", r.source, r.reason)
                except Exception:  # noqa: BLE001 - a bad import must not keep the service down
                    log.exception("knowledge base import from %s failed", source)
        await kb.reload()  # builds unless the import above just did (its version is then current)

    rt.on_startup(startup)
    rt.add_task("kb-reload", kb.poll_forever, roles={"all", "web", "worker"})
