"""Late interaction (token-level MaxSim) with semantic vectors: the pure pieces, and the ranker with a stand-in
encoder (no torch here) that answers ``encode`` / ``encode(output_value=None)`` like sentence-transformers."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from knowledge_base.features import TokenIndex, merge_near_duplicates
from knowledge_base.ranker import CONFIDENCE_FEATURES, Calibration, Doc, Ranker, confidence_features
from knowledge_base.semantic import Embedder, token_vectors

DIM = 24


def unit(rows: list[list[float]]) -> np.ndarray:
    m = np.asarray(rows, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_near_duplicates_merge_and_distinct_vectors_stay() -> None:
    rows = unit([[1, 0, 0], [0.99, 0.05, 0], [0, 1, 0], [0, 0, 1], [0.02, 0.99, 0]])
    merged = merge_near_duplicates(rows, 0.9)
    assert merged.shape == (3, 3)
    np.testing.assert_allclose(np.linalg.norm(merged, axis=1), 1.0, rtol=1e-5)
    assert (merged @ rows.T).max(axis=0).min() > 0.99  # every input is still represented
    # the same groups whether the rows arrive in one chunk or many
    np.testing.assert_allclose(merge_near_duplicates(rows, 0.9, chunk=2), merged, rtol=1e-5)
    np.testing.assert_array_equal(merge_near_duplicates(rows, 1.0), rows)
    assert merge_near_duplicates(np.zeros((0, 3), np.float32), 0.8).shape == (0, 3)


def test_token_index_scores_are_maxsim() -> None:
    a = unit([[1, 0, 0], [0, 1, 0]])
    b = unit([[0, 0, 1]])
    index = TokenIndex([a, np.zeros((0, 3), np.float32), b], 3)
    query = unit([[1, 0, 0], [0, 1, 1]])
    got = index.scores(query, np.array([0, 1, 2]))
    expected_a = (1.0 + 1 / np.sqrt(2)) / 2  # token 1 matches a[0]; token 2 best cosine with a[1]
    expected_b = (0.0 + 1 / np.sqrt(2)) / 2
    np.testing.assert_allclose(got, [expected_a, 0.0, expected_b], rtol=1e-3)
    assert index.scores(np.zeros((0, 3), np.float32), np.array([0])).tolist() == [0.0]


def test_token_vectors_drop_padding_and_markers() -> None:
    emb = np.arange(5 * 2, dtype=np.float32).reshape(5, 2) + 1
    got = token_vectors(emb, np.array([1, 1, 1, 1, 0]))
    np.testing.assert_allclose(got, unit(emb[1:3].tolist()))  # [CLS] x y [SEP] <pad>
    assert len(token_vectors(emb, np.array([1, 1, 0, 0, 0]))) == 2  # nothing but the markers: kept


def word_vector(word: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


class FakeModel:
    """Token vectors are fixed per word; the sentence vector is their mean. Counts the texts it encodes."""

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def _tokens(self, text: str) -> np.ndarray:
        words = text.lower().replace("?", " ").split() or ["<empty>"]
        return np.stack([word_vector("[CLS]"), *(word_vector(w) for w in words), word_vector("[SEP]")])

    def encode(self, texts: list[str], batch_size: int = 64, output_value: str | None = "sentence_embedding",
               **_: Any) -> Any:
        self.encoded.extend(texts)
        toks = [self._tokens(t) for t in texts]
        if output_value is None:
            width = max(len(t) for t in toks) + 1  # padded like a batch
            outs = []
            for t in toks:
                padded = np.zeros((width, DIM), np.float32)
                padded[:len(t)] = t
                mask = np.zeros(width, np.int64)
                mask[:len(t)] = 1
                sentence = t.mean(axis=0)
                outs.append({"sentence_embedding": sentence / np.linalg.norm(sentence), "token_embeddings": padded,
                             "attention_mask": mask})
            return outs
        sent = np.stack([t.mean(axis=0) for t in toks])
        return sent / np.linalg.norm(sent, axis=1, keepdims=True)


DOCS = [
    Doc("card-arrival", "en", "Card delivery", questions=("when will my new card arrive", "card still not here",
                                                          "how long does card delivery take")),
    Doc("lost-card", "en", "Lost or stolen card", questions=("i lost my card", "my card was stolen",
                                                             "someone took my wallet with the card")),
    Doc("refund", "en", "Refunds", questions=("how do i get a refund", "refund for a returned item",
                                              "money back for my order")),
    Doc("top-up", "en", "Topping up", questions=("how to top up my account", "add money by bank transfer",
                                                 "top up with a card")),
]


@pytest.fixture
def embedder() -> Embedder:
    return Embedder(FakeModel(), "fake")


def test_ranker_uses_late_interaction_with_vectors(embedder: Embedder) -> None:
    ranker = Ranker(DOCS, embedder=embedder)
    index = ranker.indexes["en"]
    assert index.tokens is not None and index.tokens.size > 0
    res = ranker.search("my card was stolen yesterday", "en")
    assert res.top is not None and res.top.id == "lost-card"
    assert {"late", "nearest", "prob"} <= set(res.top.evidence)
    assert res.top.evidence["nearest"] == 1.0
    features = confidence_features(res.hits)
    assert len(features) == len(CONFIDENCE_FEATURES) == len(Calibration().weights)
    assert 0.0 <= res.confidence <= 1.0


def test_lexical_index_has_no_token_vectors() -> None:
    ranker = Ranker(DOCS, embedder=None)
    assert ranker.indexes["en"].tokens is None
    res = ranker.search("my card was stolen", "en")
    assert res.top is not None and res.top.id == "lost-card"
    assert "late" not in res.top.evidence


def test_rebuild_encodes_only_changed_articles(embedder: Embedder) -> None:
    first = Ranker(DOCS, embedder=embedder)
    model: FakeModel = embedder.model
    model.encoded.clear()
    changed = Doc("refund", "en", "Refunds", questions=("how do i get a refund", "where is my refund"))
    docs = [changed if d.id == "refund" else d for d in DOCS]
    second = Ranker(docs, embedder=embedder, previous=first)
    assert model.encoded == ["Refunds", "how do i get a refund", "where is my refund"]
    for query in ("where is my refund", "card still not here", "top up by bank transfer"):
        again = Ranker(docs, embedder=embedder).search(query, "en")
        reused = second.search(query, "en")
        assert reused.top is not None and again.top is not None and reused.top.id == again.top.id
        assert reused.top.evidence["late"] == pytest.approx(again.top.evidence["late"], abs=1e-3)
    # another encoder: nothing is reused
    other = Embedder(FakeModel(), "other")
    Ranker(docs, embedder=other, previous=second)
    assert len(other.model.encoded) >= sum(1 + len(d.questions) for d in docs)


def test_above_the_bound_an_index_has_no_token_vectors(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    import knowledge_base.ranker as ranker_module

    monkeypatch.setattr(ranker_module, "LATE_MAX_UNITS", 5)  # fewer than the 16 titles and questions of DOCS
    ranker = Ranker(DOCS, embedder=embedder)
    index = ranker.indexes["en"]
    assert index.tokens is None and index.unit_emb is not None  # sentence vectors stay
    res = ranker.search("my card was stolen yesterday", "en")
    assert res.top is not None and res.top.id == "lost-card"
    assert "late" not in res.top.evidence and "sem" in res.top.evidence
    assert ranker.indexes["en"].token_blocks() == {}
