"""The index a server fits in a child process: the same answers as one fitted here, and a server process that
uses it never imports scikit-learn, scipy or bm25s (their ~80 MB stay in the short-lived child)."""

from __future__ import annotations

import random
import string
import subprocess
import sys
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer

from knowledge_base import DEMO_PATH
from knowledge_base.analyzer import normalize
from knowledge_base.features import char_wb_grams
from knowledge_base.importer import parse_path
from knowledge_base.index_child import build_in_child
from knowledge_base.ranker import Doc, Ranker

ROOT = Path(__file__).resolve().parents[2]
QUERIES = [("klinik bukanya jam brp ya", "id"), ("paket sy udh sampe mana", "id"), ("bisa cod ga", "id"),
           ("is there free shipping", "en"), ("i typed the wrong delivery address", "en"), ("zzzz qqq", "id")]


def demo_docs() -> list[Doc]:
    return [Doc(a.external_id, a.language, a.title, a.body, a.questions, a.category, a.tags, a.answer)
            for a in parse_path(DEMO_PATH).articles]


def test_character_grams_are_scikit_learns_char_wb() -> None:
    reference = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), preprocessor=normalize).build_analyzer()
    rng = random.Random(5)
    texts = ["Bagaimana cara  reset kata sandi?", "a", "ab", "abc", "abcd abcde abcdef", " \t\n", "",
             "Ünïcödé ﬁ  tes\u00a0t"]
    texts += ["".join(rng.choice(string.ascii_letters + " \t\n?!é2-") for _ in range(rng.randint(0, 50)))
              for _ in range(2000)]
    for text in texts:
        assert char_wb_grams(text, normalize) == reference(text), text


async def test_an_index_fitted_in_a_child_answers_like_one_fitted_here() -> None:
    docs = demo_docs()
    here = Ranker(docs, embedder=None)
    there = await build_in_child(docs, here.calibration)
    assert there.languages == here.languages and sorted(there.docs) == sorted(here.docs)
    for query, lang in QUERIES:
        a, b = here.search(query, lang), there.search(query, lang)
        assert [h.id for h in b.hits] == [h.id for h in a.hits], query
        assert [round(h.score, 5) for h in b.hits] == [round(h.score, 5) for h in a.hits], query
        assert round(b.confidence, 5) == round(a.confidence, 5)


def test_a_process_using_a_child_built_index_never_imports_the_fitting_libraries() -> None:
    script = f"""
import asyncio, sys
from pathlib import Path
from knowledge_base.importer import parse_path
from knowledge_base.index_child import build_in_child
from knowledge_base.ranker import Doc
docs = [Doc(a.external_id, a.language, a.title, a.body, a.questions, a.category, a.tags, a.answer)
        for a in parse_path(Path({str(DEMO_PATH)!r})).articles]
from knowledge_base.ranker import Calibration
ranker = asyncio.run(build_in_child(docs, Calibration()))
top = ranker.search("klinik bukanya jam brp ya", "id").top
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & {{"sklearn", "scipy", "bm25s"}})
print(top.id if top else None, loaded)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "klinik-jam-buka []"
