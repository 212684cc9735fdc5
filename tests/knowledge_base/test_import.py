"""Import from Markdown folders and CSV: good files, per-file errors, re-import updates by id."""

from __future__ import annotations

import textwrap
from pathlib import Path

from sqlalchemy import select

from bot.clock import Clock
from knowledge_base.models import kb_articles, kb_categories
from knowledge_base.service import KnowledgeBase
from storage.db import make_engine


def md(meta: str, body: str = "Jawaban singkat.\n\nDetail lain.") -> str:
    return "---\n" + textwrap.dedent(meta).strip() + "\n---\n\n" + body + "\n"


GOOD = md("""
    id: jam-buka
    title: Jam buka
    category: Informasi umum
    language: id
    tags: [jam, buka]
    questions:
      - Jam berapa buka?
      - Minggu buka?
      - Tutup jam berapa?
""", "Kami buka **setiap hari** pukul 08.00–20.00.\n\n## Libur\nTutup saat Lebaran.")


async def make_kb(db_url: str) -> KnowledgeBase:
    kb = KnowledgeBase(make_engine(db_url), Clock(), {"LOKET_KB_SEMANTIC": "off"})
    await kb.reload(force=True)
    return kb


async def test_folder_import_reports_bad_files_and_imports_the_rest(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "good.md").write_text(GOOD)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "english.md").write_text(md("""
        id: opening-hours
        title: Opening hours
        language: en
        questions: ["When are you open?", "Open on Sunday?", "What time do you close?"]
    """, "We are open every day from 08:00 to 20:00."))
    (tmp_path / "no-front.md").write_text("# Just a heading\n\nNo front matter here.")
    (tmp_path / "broken-yaml.md").write_text("---\nid: x\ntitle: [unclosed\n---\nbody\n")
    (tmp_path / "missing.md").write_text(md("title: No id here\nlanguage: id"))
    (tmp_path / "bad-lang.md").write_text(md("id: fr\ntitle: Heures\nlanguage: fr"))
    (tmp_path / "empty-body.md").write_text(md("id: kosong\ntitle: Kosong\nlanguage: id", ""))
    (tmp_path / "notes.txt").write_text("ignored: not Markdown")
    kb = await make_kb(db_url)
    try:
        res = await kb.import_path(tmp_path)
        assert (res.created, res.updated, res.unchanged) == (2, 0, 0)
        reasons = {Path(r.source).name: r.reason for r in res.rejected}
        assert set(reasons) == {"no-front.md", "broken-yaml.md", "missing.md", "bad-lang.md", "empty-body.md"}
        assert "front matter" in reasons["no-front.md"]
        assert "malformed front matter" in reasons["broken-yaml.md"]
        assert "id" in reasons["missing.md"] and "missing required" in reasons["missing.md"]
        assert "'fr'" in reasons["bad-lang.md"]
        assert "no body" in reasons["empty-body.md"]
        async with kb.engine.connect() as conn:
            art = (await conn.execute(select(kb_articles).where(kb_articles.c.external_id == "jam-buka"))).mappings().one()
            cats = (await conn.execute(select(kb_categories))).mappings().all()
        assert art["answer"] == "Kami buka setiap hari pukul 08.00–20.00."
        assert art["questions"] == ["Jam berapa buka?", "Minggu buka?", "Tutup jam berapa?"]
        assert art["category"] == "informasi-umum" and art["version"] == 1
        assert {(c["slug"], c["language"]) for c in cats} == {("informasi-umum", "id"), ("umum", "en")}
        # the live index already knows the new articles (no restart)
        assert kb.search("jam brp buka", "id").top.id == "jam-buka"
    finally:
        await kb.engine.dispose()


async def test_reimport_updates_instead_of_duplicating(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(GOOD)
    kb = await make_kb(db_url)
    try:
        first = await kb.import_path(tmp_path)
        again = await kb.import_path(tmp_path)
        assert (first.created, again.created, again.unchanged) == (1, 0, 1)
        (tmp_path / "a.md").write_text(GOOD.replace("Jam buka", "Jam operasional klinik")
                                       .replace("Tutup saat Lebaran", "Tutup saat Natal"))
        changed = await kb.import_path(tmp_path)
        assert (changed.created, changed.updated) == (0, 1)
        async with kb.engine.connect() as conn:
            rows = (await conn.execute(select(kb_articles))).mappings().all()
        assert len(rows) == 1
        assert rows[0]["version"] == 2 and rows[0]["title"] == "Jam operasional klinik"
        assert "Natal" in rows[0]["body"]
        assert kb.search("jam operasional", "id").top.title == "Jam operasional klinik"
    finally:
        await kb.engine.dispose()


async def test_csv_import_with_bad_rows(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "articles.csv"
    path.write_text(
        "id,title,body,language,category,tags,questions\n"
        "retur,Retur barang,Retur dalam 7 hari.,id,toko,retur,Cara retur?|Bisa tukar barang?|Batas retur?\n"
        "refund,Refunds,Refunds take 3-7 days.,en,shop,,When do I get my money?|Refund time?|Where is my refund?\n"
        ",Tanpa id,Isi,id,,,\n"
        "klingon,Title,Body,tlh,,,\n"
        "retur,Duplikat,Isi,id,,,\n",
        encoding="utf-8",
    )
    kb = await make_kb(db_url)
    try:
        res = await kb.import_path(path)
        assert res.created == 2
        rows = {r.source.rsplit(":", 1)[1]: r.reason for r in res.rejected}
        assert set(rows) == {"row 4", "row 5", "row 6"}
        assert "missing required field(s): id" in rows["row 4"]
        assert "tlh" in rows["row 5"]
        assert "twice" in rows["row 6"]
        async with kb.engine.connect() as conn:
            q = (await conn.execute(select(kb_articles.c.questions).where(kb_articles.c.external_id == "retur"))).scalar()
        assert q == ["Cara retur?", "Bisa tukar barang?", "Batas retur?"]
    finally:
        await kb.engine.dispose()
