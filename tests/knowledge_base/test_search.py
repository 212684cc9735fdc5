"""Ranking on the shipped demo knowledge base, bad queries, and the absent embedding model."""

from __future__ import annotations

import logging

import pytest

from knowledge_base import DEMO_PATH
from knowledge_base.importer import parse_path
from knowledge_base.ranker import Doc, Ranker
from knowledge_base.semantic import _warned, load_embedder


@pytest.fixture(scope="module")
def demo() -> Ranker:
    report = parse_path(DEMO_PATH)
    assert not report.rejected and len(report.articles) >= 40
    docs = [Doc(a.external_id, a.language, a.title, a.body, a.questions, a.category, a.tags, a.answer)
            for a in report.articles]
    return Ranker(docs, embedder=None)


@pytest.mark.parametrize(("query", "lang", "expected"), [
    ("klinik bukanya jam brp ya", "id", "klinik-jam-buka"),
    ("gmn cara batalin janji dokter", "id", "klinik-ubah-janji"),
    ("berobat pake bpjs bisa?", "id", "klinik-bpjs"),
    ("paket sy udh sampe mana", "id", "toko-lacak-pesanan"),
    ("kapan uang sy dikembalikan", "id", "toko-refund"),
    ("bisa cod ga", "id", "toko-pembayaran"),
    ("barang datang pecah", "id", "toko-barang-rusak"),
    ("is there free shipping", "en", "shop-shipping"),
    ("can I get a flu shot", "en", "clinic-vaccination"),
    ("i typed the wrong delivery address", "en", "shop-change-address"),
])
def test_demo_ranking(demo: Ranker, query: str, lang: str, expected: str) -> None:
    res = demo.search(query, lang)
    assert res.top is not None and res.top.id == expected, [(h.id, round(h.score, 3)) for h in res.hits]
    assert res.language == lang


def test_confidence_separates_answerable_from_unrelated(demo: Ranker) -> None:
    good = demo.search("jam buka klinik hari minggu", "id")
    bad = demo.search("resep kue nastar yang renyah", "id")
    assert good.confidence > 0.5 > bad.confidence


@pytest.mark.parametrize("query", ["", "   ", "😀😀🙏", "!!!???", "Привет как дела", "สวัสดีครับ", "🤔" * 5000,
                                   "kartu " * 20000, "\x00\x01<script>alert(1)</script>"])
def test_bad_queries_do_not_break_search(demo: Ranker, query: str) -> None:
    res = demo.search(query, "id")
    assert res.elapsed_ms < 2000
    assert 0.0 <= res.confidence <= 1.0
    if not any(ch.isalpha() and ch.isascii() for ch in query):
        assert res.confidence < 0.5


def test_absent_embedding_model_warns_once_and_lexical_still_works(
        demo: Ranker, caplog: pytest.LogCaptureFixture, tmp_path: object) -> None:
    env = {"LOKET_KB_MODEL": f"{tmp_path}/no-such-model", "LOKET_KB_SEMANTIC": "auto"}
    _warned.discard(env["LOKET_KB_MODEL"])
    with caplog.at_level(logging.WARNING, logger="loket.kb"):
        assert load_embedder(env) is None
        assert load_embedder(env) is None
    warnings = [r for r in caplog.records if "embedding model" in r.getMessage()]
    assert len(warnings) == 1 and "lexical" in warnings[0].getMessage()
    ranker = Ranker(list(demo.docs.values()), embedder=load_embedder(env))
    assert ranker.search("jam buka klinik", "id").top.id == "klinik-jam-buka"
