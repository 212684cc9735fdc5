"""`loket kb gaps`: unanswered and low-confidence questions grouped by similarity, with counts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from knowledge_base.gaps import group_gaps
from knowledge_base.models import kb_queries
from storage.db import make_engine
from tests.knowledge_base.test_cli import run


def test_grouping_puts_paraphrases_together() -> None:
    rows = [
        {"text": "apotek buka jam berapa", "language": "id", "outcome": "none", "top_article": None},
        {"text": "jam buka apotek?", "language": "id", "outcome": "none", "top_article": None},
        {"text": "Apotek bukanya jam brp", "language": "id", "outcome": "offered", "top_article": "klinik-jam-buka"},
        {"text": "bisa cicilan pakai kartu kredit", "language": "id", "outcome": "unhelpful",
         "top_article": "toko-pembayaran"},
        {"text": "   ", "language": "id", "outcome": "none", "top_article": None},
    ]
    gaps = group_gaps(rows)
    assert [g.count for g in gaps] == [3, 1]
    assert gaps[0].example == "apotek buka jam berapa"
    assert gaps[0].outcomes == {"none": 2, "offered": 1}
    assert gaps[0].closest == "klinik-jam-buka"
    assert gaps[1].outcomes == {"unhelpful": 1}


def test_gaps_command_lists_groups_with_counts(db_url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    texts = [("apotek buka jam berapa", "none"), ("jam buka apotek?", "none"), ("apotek 24 jam ada?", "offered"),
             ("parkir sepeda di mana", "none"), ("harga obat batuk", "answered"),
             ("lama sekali pertanyaan dulu", "none")]

    async def insert() -> None:
        engine = make_engine(db_url)
        async with engine.begin() as conn:
            for i, (text, outcome) in enumerate(texts):
                when = now - timedelta(days=90 if text.startswith("lama") else 0, minutes=i)
                await conn.execute(kb_queries.insert().values(text=text, language="id", top_article=None,
                                                              score=0.1, outcome=outcome, conversation_id=None,
                                                              created_at=when))
        await engine.dispose()

    asyncio.run(insert())
    out = run(["gaps", "--days", "30"], db_url, tmp_path)
    lines = [ln for ln in out.splitlines() if "apotek" in ln or "parkir" in ln or "obat" in ln or "lama" in ln]
    assert any("apotek" in ln and " 3 " in ln for ln in lines), out
    assert any("parkir" in ln and " 1 " in ln for ln in lines), out
    assert "obat" not in out and "lama sekali" not in out
