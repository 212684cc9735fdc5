"""The live knowledge base of one process: the index over published articles, kept fresh, and the import.

Writes made in this process rebuild the index at once; other processes notice the ``kb_state.version``
counter moving (polled every ``LOKET_KB_POLL_SECONDS``, default 2) and rebuild too. Rebuilds run in a thread
and swap the index atomically, so searches never wait for one.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.clock import Clock
from knowledge_base import store
from knowledge_base.importer import ArticleInput, ParseReport, Rejected, parse_source, sources
from knowledge_base.index_child import IndexBuildFailed, build_in_child
from knowledge_base.ranker import Calibration, Ranker, Result, semantic_languages
from knowledge_base.semantic import Embedder, load_embedder

log = logging.getLogger("loket.kb")


def _float(env: dict[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name) or default)
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, env.get(name), default)
        return default


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    version: int = 0

    @property
    def imported(self) -> int:
        return self.created + self.updated + self.unchanged


class KnowledgeBase:
    def __init__(self, engine: AsyncEngine, clock: Clock, env: dict[str, str] | None = None, *,
                 long_running: bool = False) -> None:
        env = env or {}
        self.engine = engine
        self.clock = clock
        self.env = env
        self.answer_threshold = _float(env, "LOKET_KB_ANSWER_THRESHOLD", 0.5)
        self.offer_threshold = _float(env, "LOKET_KB_OFFER_THRESHOLD", 0.2)
        self.poll_seconds = _float(env, "LOKET_KB_POLL_SECONDS", 2.0)
        self.ranker = Ranker([])
        self.version = -1
        self.embedder: Embedder | None = None
        self._embedder_loaded = False
        self._lock = asyncio.Lock()
        self.calibration = Calibration()
        self.live = True  # False in CLI processes: writes do not rebuild a local index
        # Long-running servers fit a lexical index in a child process (scikit-learn never loads in them; see
        # knowledge_base.index_child); commands and tests fit in process. LOKET_KB_BUILD=child|thread overrides.
        mode = (env.get("LOKET_KB_BUILD") or "").strip().lower()
        self.build_in_child = mode == "child" if mode else long_running

    # ------------------------------------------------------------------ index
    def _load_embedder(self) -> Embedder | None:
        if not self._embedder_loaded:
            self.embedder = load_embedder(self.env)
            self._embedder_loaded = True
        return self.embedder

    async def reload(self, force: bool = False) -> bool:
        """Rebuild the index if the stored version moved (or ``force``). Returns True when rebuilt."""
        async with self._lock:
            async with self.engine.connect() as conn:
                version = await store.current_version(conn)
                if version == self.version and not force:
                    return False
                docs = await store.published_docs(conn)

            t0 = time.perf_counter()
            embedder = (await asyncio.to_thread(self._load_embedder)) if docs else self.embedder
            ranker: Ranker | None = None
            where = "here"
            if docs and embedder is None and self.build_in_child:
                try:
                    ranker, where = await build_in_child(docs, self.calibration), "in a child process"
                except (IndexBuildFailed, OSError, pickle.UnpicklingError) as exc:
                    log.warning("building the knowledge base index in a child process failed (%s); "
                                "building it in this process instead", exc)
            if ranker is None:
                ranker = await asyncio.to_thread(Ranker, docs, embedder=embedder, calibration=self.calibration,
                                                 semantic_languages=semantic_languages(self.env),
                                                 previous=self.ranker)
            self.ranker, self.version = ranker, version
            log.info("knowledge base index: %d articles (%s), version %d, built %s in %.2fs%s", len(docs),
                     ", ".join(ranker.languages) or "-", version, where, time.perf_counter() - t0,
                     " (tuned embedding model)" if getattr(ranker.embedder, "tuned", False)
                     else "" if ranker.embedder else " (lexical only)")
            return True

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed poll is retried on the next tick
                log.exception("knowledge base reload failed")

    def search(self, query: str, language: str = "id", k: int = 5) -> Result:
        return self.ranker.search(query, language, k)

    def decide(self, result: Result) -> str:
        """``answer`` (confident), ``offer`` (show the top choices) or ``none`` (offer a human)."""
        if not result.hits:
            return "none"
        if result.confidence >= self.answer_threshold:
            return "answer"
        if result.confidence >= self.offer_threshold:
            return "offer"
        return "none"

    # ------------------------------------------------------------------ import
    async def import_path(self, path: Path, progress: Callable[[str, int, int], None] | None = None) -> ImportResult:
        files = sources(path) if path.exists() else []
        report = ParseReport()
        if not path.exists():
            report.rejected.append(Rejected(str(path), "no such file or folder"))
        for n, f in enumerate(files, start=1):
            parse_source(f, report)
            if progress:
                progress("parse", n, len(files))
        seen: dict[str, ArticleInput] = {}
        for a in report.articles:
            if a.external_id in seen:
                report.rejected.append(Rejected(a.external_id, "id used more than once; the first one is kept"))
            else:
                seen[a.external_id] = a
        return await self.save(list(seen.values()), report.rejected, progress)

    async def save(self, articles: list[ArticleInput], rejected: list[Rejected] | None = None,
                   progress: Callable[[str, int, int], None] | None = None) -> ImportResult:
        result = ImportResult(rejected=list(rejected or []))
        now = self.clock.now()
        async with self.engine.begin() as conn:
            for n, art in enumerate(articles, start=1):
                outcome = await store.upsert_article(conn, art, now)
                setattr(result, outcome, getattr(result, outcome) + 1)
                if progress:
                    progress("save", n, len(articles))
            if result.created or result.updated:
                result.version = await store.bump_version(conn, now)
            else:
                result.version = await store.current_version(conn)
        if self.live and (result.created or result.updated):
            await self.reload()
        return result

    async def save_article(self, art: ArticleInput, *, create: bool,
                           expected_version: int | None = None) -> tuple[str, int]:
        """Save one article from the console editor: (``created`` / ``updated`` / ``unchanged``, its version).

        ``create`` refuses an id that exists; an update refuses when the stored version is no longer
        ``expected_version`` (someone else saved meanwhile). Both raise ``store.VersionConflict``. The index
        of this process is rebuilt at once; other processes follow ``kb_state.version``.
        """
        now = self.clock.now()
        try:
            async with self.engine.begin() as conn:
                existing = await store.get_article(conn, art.external_id)
                if create and existing is not None:
                    raise store.VersionConflict(f"the id {art.external_id!r} is already used by another article")
                if not create and existing is None:
                    raise store.VersionConflict(f"there is no article {art.external_id!r} any more")
                outcome = await store.upsert_article(conn, art, now,
                                                     expected_version=None if create else expected_version)
                if outcome != "unchanged":
                    await store.bump_version(conn, now)
                saved = await store.get_article(conn, art.external_id)
                assert saved is not None
        except IntegrityError as exc:  # two editors created the same id at once
            raise store.VersionConflict(f"the id {art.external_id!r} is already used by another article") from exc
        if self.live and outcome != "unchanged":
            await self.reload()
        return outcome, int(saved["version"])

    async def is_empty(self) -> bool:
        async with self.engine.connect() as conn:
            return await store.article_count(conn) == 0

    def info(self) -> dict[str, Any]:
        return {"version": self.version, "languages": self.ranker.languages, "articles": len(self.ranker.docs),
                "semantic": self.ranker.embedder is not None}
