"""Retrieval and confidence: BM25 + TF-IDF evidence, an optional learned classifier and optional semantic vectors.

An index is built per language from the published articles. Each article contributes *units* (its title and
each example question) and one long document (title, questions, tags, body). For a query we gather candidates
from BM25 (units and documents), the classifier and the vectors, compute per-article evidence in [0, 1] and
fuse it into one score; the confidence is a logistic function of the best score and its margin over the
second, with coefficients that ``fit_calibration`` learns from held-out questions.

Nothing here touches the database: ``Doc`` in, ``Hit`` out.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import bm25s
import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from knowledge_base.analyzer import analyze, normalize
from knowledge_base.semantic import Embedder

log = logging.getLogger("loket.kb")

MAX_QUERY_CHARS = 1000
# all-MiniLM-L6-v2 is an English model: on the Indonesian demo set it lowered accuracy (87.9 → 77.9 %),
# so Indonesian indexes stay lexical unless LOKET_KB_SEMANTIC_LANGUAGES says otherwise.
SEMANTIC_LANGUAGES: tuple[str, ...] = ("en",)
# Fusion weights (renormalised over the evidence present). Chosen on a development split carved out of the
# BANKING77 training part (never its test part) and on the demo articles' example questions.
# With vectors, few examples per article lean on the embeddings (scale 4 in the classifier, weight 0.5),
# many examples on the classifier: on that split 10-shot went 84.8 → 87.3 %, full data stayed at ~92.9 %.
LEXICAL_WEIGHTS = {"clf": 0.45, "word": 0.2, "char": 0.15, "sem": 0.0}
SEMANTIC_WEIGHTS = {"clf": 0.45, "word": 0.2, "char": 0.15, "sem": 0.2}
SEMANTIC_FEW_WEIGHTS = {"clf": 0.35, "word": 0.1, "char": 0.05, "sem": 0.5}
FEW_EXAMPLES = 20  # median example questions per article below which the "few" settings apply
EMB_SCALE_FEW = 4.0
EMB_SCALE = 1.5  # weight of the embedding block next to the TF-IDF blocks in the classifier
CLF_C = 20.0
LEARN_MAX_UNITS = 60_000  # above this the classifier is not trained (lexical + vectors only)
CHAR_MAX_UNITS = 60_000


@dataclass(frozen=True)
class Doc:
    id: str
    language: str
    title: str
    body: str = ""
    questions: tuple[str, ...] = ()
    category: str = ""
    tags: tuple[str, ...] = ()
    answer: str = ""


@dataclass(frozen=True)
class Hit:
    id: str
    title: str
    score: float
    evidence: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    query: str
    language: str
    hits: list[Hit]
    confidence: float
    elapsed_ms: float

    @property
    def top(self) -> Hit | None:
        return self.hits[0] if self.hits else None


@dataclass
class Calibration:
    """confidence = sigmoid(a * top + b * margin + d * cover + c); cover = share of the query's terms the top
    article contains."""

    a: float = 9.0
    b: float = 5.0
    c: float = -7.0
    d: float = 3.5

    def __call__(self, top: float, margin: float, cover: float = 1.0) -> float:
        z = self.a * top + self.b * margin + self.d * cover + self.c
        return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))


def _identity(x: list[str]) -> list[str]:
    return x


class LanguageIndex:
    def __init__(self, docs: list[Doc], language: str, embedder: Embedder | None = None,
                 learn: bool = True, weights: dict[str, float] | None = None) -> None:
        t0 = time.perf_counter()
        self.language = language
        self.docs = docs
        self.embedder = embedder
        self.unit_article: list[int] = []
        unit_texts: list[str] = []
        for i, d in enumerate(docs):
            for text in (d.title, *d.questions):
                if text.strip():
                    unit_texts.append(text)
                    self.unit_article.append(i)
        self.unit_texts = unit_texts
        self.unit_article_arr = np.asarray(self.unit_article, dtype=np.int64)
        self.n = len(docs)
        unit_tokens = [analyze(t, language) for t in unit_texts]
        doc_tokens = [
            analyze(" ".join([d.title, d.title, *d.questions, *d.tags, d.category, d.body[:4000]]), language)
            for d in docs
        ]
        self.vocab = [frozenset(t) for t in doc_tokens]
        self.bm25_units = self._bm25(unit_tokens)
        self.bm25_docs = self._bm25(doc_tokens)
        # TF-IDF cosine over units: bounded evidence of how well the query matches an example question.
        self.word_vec: TfidfVectorizer | None = None
        self.unit_word: sparse.csr_matrix | None = None
        self.char_vec: TfidfVectorizer | None = None
        self.unit_char: sparse.csr_matrix | None = None
        if unit_texts:
            self.word_vec = TfidfVectorizer(analyzer=_identity, ngram_range=(1, 1), sublinear_tf=True, min_df=1)
            self.unit_word = self.word_vec.fit_transform(unit_tokens).tocsr()
            self._idf_max = float(self.word_vec.idf_.max())
            if len(unit_texts) <= CHAR_MAX_UNITS:
                self.char_vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True,
                                                min_df=1, preprocessor=normalize, max_features=200_000)
                self.unit_char = self.char_vec.fit_transform(unit_texts).tocsr()
        self.unit_emb: np.ndarray | None = None
        if embedder is not None and unit_texts:
            self.unit_emb = embedder.encode(unit_texts)
        counts = np.bincount(self.unit_article_arr, minlength=max(self.n, 1)) if self.n else np.zeros(1)
        few = float(np.median(counts)) < FEW_EXAMPLES
        self.emb_scale = EMB_SCALE_FEW if few else EMB_SCALE
        self.clf: LogisticRegression | None = None
        if learn and self.n >= 2 and len(unit_texts) <= LEARN_MAX_UNITS:
            x = self._features_many(unit_tokens, unit_texts, self.unit_emb)
            self.clf = LogisticRegression(C=CLF_C, max_iter=300, tol=1e-3)
            self.clf.fit(x, self.unit_article_arr)
        if self.unit_emb is None:
            w = dict(LEXICAL_WEIGHTS)
        else:
            w = dict(SEMANTIC_FEW_WEIGHTS if few else SEMANTIC_WEIGHTS)
        if weights:
            w.update(weights)
        if self.clf is None:
            w["clf"] = 0.0
        if self.unit_emb is None:
            w["sem"] = 0.0
        if self.char_vec is None:
            w["char"] = 0.0
        total = sum(w.values()) or 1.0
        self.weights = {k: v / total for k, v in w.items()}
        self.build_seconds = time.perf_counter() - t0

    @staticmethod
    def _bm25(tokens: list[list[str]]) -> bm25s.BM25 | None:
        if not tokens or not any(tokens):
            return None
        r = bm25s.BM25()
        r.index([t or [""] for t in tokens], show_progress=False)
        return r

    def _features_many(self, tokens: list[list[str]], texts: list[str], emb: np.ndarray | None) -> Any:
        assert self.word_vec is not None
        parts: list[Any] = [self.word_vec.transform(tokens)]
        if self.char_vec is not None:
            parts.append(self.char_vec.transform(texts))
        if emb is not None:
            parts.append(sparse.csr_matrix(emb * self.emb_scale))
        return sparse.hstack(parts).tocsr()

    # ------------------------------------------------------------------ query
    def search(self, query: str, k: int = 5, lexical_only: bool = False) -> list[Hit]:
        if not self.n:
            return []
        q_tokens = analyze(query, self.language)
        q_text = query
        cand: set[int] = set()
        bm_units = self._bm25_scores(self.bm25_units, q_tokens)
        if bm_units is not None:
            top_u = np.argpartition(-bm_units, min(50, len(bm_units) - 1))[:50]
            cand.update(int(self.unit_article_arr[u]) for u in top_u if bm_units[u] > 0)
        bm_docs = self._bm25_scores(self.bm25_docs, q_tokens)
        if bm_docs is not None:
            top_d = np.argpartition(-bm_docs, min(20, len(bm_docs) - 1))[:20]
            cand.update(int(d) for d in top_d if bm_docs[d] > 0)
        if lexical_only:
            if bm_docs is None:
                return []
            order = sorted(cand, key=lambda i: -float(bm_docs[i]))[:k]
            best = float(bm_docs[order[0]]) if order else 1.0
            return [Hit(self.docs[i].id, self.docs[i].title, float(bm_docs[i]) / (best or 1.0)) for i in order]
        word_q = self.word_vec.transform([q_tokens]) if self.word_vec is not None else None
        char_q = self.char_vec.transform([q_text]) if self.char_vec is not None else None
        sem_q = self.embedder.encode([q_text[:MAX_QUERY_CHARS]]) if self.unit_emb is not None and self.embedder else None
        per_article: dict[str, np.ndarray] = {}
        if word_q is not None and word_q.nnz and self.unit_word is not None:
            per_article["word"] = self._max_per_article((self.unit_word @ word_q.T).toarray().ravel())
            per_article["word"] *= self._known_share(q_tokens)
        if char_q is not None and char_q.nnz and self.unit_char is not None:
            per_article["char"] = self._max_per_article((self.unit_char @ char_q.T).toarray().ravel())
        if sem_q is not None and self.unit_emb is not None:
            sims = self.unit_emb @ sem_q[0]
            per_article["sem"] = np.clip(self._max_per_article(sims), 0.0, 1.0)
            cand.update(int(i) for i in np.argsort(-per_article["sem"])[:10])
        if self.clf is not None and word_q is not None:
            parts: list[Any] = [word_q]
            if self.char_vec is not None and char_q is not None:
                parts.append(char_q)
            if self.unit_emb is not None and sem_q is not None:
                parts.append(sparse.csr_matrix(sem_q * self.emb_scale))
            proba = self.clf.predict_proba(sparse.hstack(parts).tocsr())[0]
            full = np.zeros(self.n)
            full[self.clf.classes_] = proba
            per_article["clf"] = full
            if word_q.nnz or sem_q is not None:
                cand.update(int(i) for i in np.argsort(-full)[:5])
        if "word" in per_article:
            cand.update(int(i) for i in np.argsort(-per_article["word"])[:10] if per_article["word"][i] > 0)
        if "clf" in per_article:
            sims = [per_article[n] for n in ("word", "char", "sem") if n in per_article]
            # the classifier's probabilities always sum to 1; scale them by how similar the text really is
            per_article["clf"] = per_article["clf"] * (np.maximum.reduce(sims) if sims else 0.0)
        if not cand:
            return []
        idx = np.fromiter(cand, dtype=np.int64)
        score = np.zeros(len(idx))
        evidence: dict[str, np.ndarray] = {}
        for name, weight in self.weights.items():
            if weight and name in per_article:
                vals = per_article[name][idx]
                evidence[name] = vals
                score += weight * vals
        top_k = np.argsort(-score)[:k]
        q_set = set(q_tokens)
        hits = []
        for o in top_k:
            ev = {n: round(float(v[o]), 4) for n, v in evidence.items()}
            ev["cover"] = round(len(q_set & self.vocab[idx[o]]) / len(q_set), 4) if q_set else 0.0
            hits.append(Hit(self.docs[idx[o]].id, self.docs[idx[o]].title, float(score[o]), ev))
        return hits

    def _known_share(self, tokens: list[str]) -> float:
        """Cosine over known terms ignores words the articles never use; count them as missing evidence."""
        assert self.word_vec is not None
        vocab = self.word_vec.vocabulary_
        idf = self.word_vec.idf_
        known = unknown = 0.0
        for tok in set(tokens):
            j = vocab.get(tok)
            if j is None:
                unknown += self._idf_max ** 2
            else:
                known += float(idf[j]) ** 2
        return math.sqrt(known / (known + unknown)) if known else 0.0

    @staticmethod
    def _bm25_scores(index: bm25s.BM25 | None, tokens: list[str]) -> np.ndarray | None:
        if index is None or not tokens:
            return None
        return np.asarray(index.get_scores(tokens))

    def _max_per_article(self, unit_scores: np.ndarray) -> np.ndarray:
        out = np.full(self.n, -np.inf if unit_scores.min() < 0 else 0.0)
        np.maximum.at(out, self.unit_article_arr, unit_scores)
        out[np.isinf(out)] = 0.0
        return out


class Ranker:
    """All languages' indexes plus the calibration that turns scores into a confidence."""

    def __init__(self, docs: list[Doc], embedder: Embedder | None = None, learn: bool = True,
                 calibration: Calibration | None = None, weights: dict[str, float] | None = None,
                 semantic_languages: tuple[str, ...] = SEMANTIC_LANGUAGES) -> None:
        t0 = time.perf_counter()
        self.embedder = embedder
        self.calibration = calibration or Calibration()
        by_lang: dict[str, list[Doc]] = {}
        for d in docs:
            by_lang.setdefault(d.language, []).append(d)
        self.indexes = {
            lang: LanguageIndex(ds, lang, embedder if lang in semantic_languages else None, learn, weights)
            for lang, ds in by_lang.items()
        }
        self.docs = {d.id: d for d in docs}
        self.build_seconds = time.perf_counter() - t0

    @property
    def languages(self) -> list[str]:
        return sorted(self.indexes)

    def search(self, query: str, language: str = "id", k: int = 5, fallback: bool = True) -> Result:
        t0 = time.perf_counter()
        query = (query or "")[:MAX_QUERY_CHARS]
        hits: list[Hit] = []
        used = language
        if query.strip():
            index = self.indexes.get(language)
            hits = index.search(query, k) if index else []
            if fallback and (not hits or hits[0].score < 0.2):
                for other, idx in self.indexes.items():
                    if other == language:
                        continue
                    alt = idx.search(query, k)
                    if alt and (not hits or alt[0].score > hits[0].score + 0.1):
                        hits, used = alt, other
        conf = 0.0
        if hits:
            second = hits[1].score if len(hits) > 1 else 0.0
            conf = self.calibration(hits[0].score, hits[0].score - second, hits[0].evidence.get("cover", 1.0))
        return Result(query, used, hits, conf, (time.perf_counter() - t0) * 1000)


def fit_calibration(rows: list[tuple[float, float, float, bool]]) -> Calibration:
    """Fit confidence = P(top answer is right) from held-out (top score, margin, cover, correct?) rows."""
    if len(rows) < 10 or len({c for *_, c in rows}) < 2:
        return Calibration()
    x = np.array([[t, m, v] for t, m, v, _ in rows])
    y = np.array([int(c) for *_, c in rows])
    lr = LogisticRegression(C=10.0, max_iter=500).fit(x, y)
    a, b, d = (float(v) for v in lr.coef_[0])
    return Calibration(a, b, float(lr.intercept_[0]), d)

