"""Term vectors, BM25 postings and linear models for the ranker: fitted by scikit-learn and bm25s once per index
build, applied per query with plain numpy on the fitted vocabulary, weights and coefficients.

Applying them ourselves skips scikit-learn's per-call input validation (it was most of a query's time), and a
fitted index is plain numpy data: scikit-learn (with the scipy.stats/optimize modules it pulls in, about 70 MB
of RSS), scipy's sparse matrices and bm25s are imported only where an index is fitted — in a server, a child
process (``knowledge_base.index_child``) — not where one is used.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Vector = tuple[np.ndarray, np.ndarray]  # (column indices, values) of one sparse row
EMPTY: Vector = (np.zeros(0, np.int64), np.zeros(0, np.float32))


def _identity(x: list[str]) -> list[str]:
    return x


_RUNS_OF_SPACE = re.compile(r"\s\s+")


def char_wb_grams(text: str, preprocessor: Callable[[str], str] | None = None, low: int = 3,
                  high: int = 5) -> list[str]:
    """Character ``low``–``high``-grams inside words padded with a space (scikit-learn's ``char_wb`` analyzer:
    a word shorter than an n-gram counts once, whole). Ours rather than the vectorizer's own, so a fitted index
    is plain data: it can be built in another process and used here without importing scikit-learn."""
    if preprocessor is not None:
        text = preprocessor(text)
    grams: list[str] = []
    add = grams.append
    for w in _RUNS_OF_SPACE.sub(" ", text).split():
        w = f" {w} "
        size = len(w)
        for n in range(low, high + 1):
            if size <= n:
                add(w)
                break
            for i in range(size - n + 1):
                add(w[i:i + n])
    return grams


class Postings:
    """Per term, the documents it occurs in and a weight for each (CSR by term: ``indptr`` has one entry per
    term plus one). ``weighted_sum`` adds up, per document, the weights of the given terms."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_docs: int) -> None:
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int64)
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.n_docs = int(n_docs)

    @classmethod
    def by_term(cls, docs_by_terms: Any) -> Postings:
        """From a fitted documents × terms sparse matrix."""
        t = docs_by_terms.T.tocsr()
        t.sort_indices()
        return cls(t.indptr, t.indices, t.data, docs_by_terms.shape[0])

    def weighted_sum(self, terms: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        ptr, indices, data = self.indptr, self.indices, self.data
        out = np.zeros(self.n_docs, np.float32)
        w = weights.tolist() if weights is not None else None
        for k, t in enumerate(terms.tolist()):
            a, b = ptr[t], ptr[t + 1]
            # a term lists each document once, so this fancy-indexed add never collides
            out[indices[a:b]] += data[a:b] if w is None else data[a:b] * w[k]
        return out


class BM25:
    """Okapi BM25 (bm25s's Lucene variant) over token lists: bm25s computes every (term, document) score at
    fit time; a query's score per document is the sum over its known tokens (repeats count again)."""

    def __init__(self, tokens: list[list[str]]) -> None:
        import bm25s

        r = bm25s.BM25()
        r.index([t or [""] for t in tokens], show_progress=False)
        if r.nonoccurrence_array is not None:  # pragma: no cover - only BM25L / BM25+ have one
            raise ValueError("BM25 variants with a non-occurrence score are not supported")
        sc = r.scores
        self.vocabulary: dict[str, int] = dict(r.vocab_dict)
        self.postings = Postings(sc["indptr"], sc["indices"], sc["data"], sc["num_docs"])

    def scores(self, tokens: list[str]) -> np.ndarray:
        vocab = self.vocabulary
        ids = np.fromiter((j for t in tokens if (j := vocab.get(t)) is not None), np.int64)
        return self.postings.weighted_sum(ids)


class TermVectors:
    """TF-IDF (sublinear tf, smoothed idf, L2-normalised) over token lists (``kind="word"``) or character
    3–5-grams inside words (``kind="char"``, with ``preprocessor`` applied to the raw text)."""

    def __init__(self, docs: Sequence[Any], kind: str, preprocessor: Callable[[str], str] | None = None,
                 max_features: int = 200_000) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        analyzer: Callable[[Any], list[str]]
        if kind == "word":
            analyzer = _identity
        elif kind == "char":
            analyzer = functools.partial(char_wb_grams, preprocessor=preprocessor)
        else:
            raise ValueError(f"unknown term vector kind {kind!r}: use 'word' or 'char'")
        vec = TfidfVectorizer(analyzer=analyzer, sublinear_tf=True,
                              max_features=max_features if kind == "char" else None)
        # documents × terms, kept only while the index is built (the classifier is fitted on it)
        self.matrix: Any = vec.fit_transform(docs).tocsr().astype(np.float32)
        self._analyze = analyzer
        self.vocabulary: dict[str, int] = vec.vocabulary_
        self.idf: np.ndarray = vec.idf_.astype(np.float32)
        # by term, so a query's few terms are a cheap slice
        self._by_term = Postings.by_term(self.matrix)

    @property
    def size(self) -> int:
        return len(self.idf)

    def release_matrix(self) -> None:
        """Drop the fitted matrix once nothing else is fitted on it (queries use the postings)."""
        self.matrix = None

    def query(self, doc: Any) -> Vector:
        vocab = self.vocabulary
        counts = Counter(j for g in self._analyze(doc) if (j := vocab.get(g)) is not None)
        if not counts:
            return EMPTY
        idx = np.fromiter(counts.keys(), np.int64, len(counts))
        val = (1.0 + np.log(np.fromiter(counts.values(), np.float32, len(counts)))) * self.idf[idx]
        return idx, (val / np.linalg.norm(val)).astype(np.float32)

    def similarities(self, q: Vector) -> np.ndarray:
        """Cosine of the query with every fitted document."""
        idx, val = q
        return self._by_term.weighted_sum(idx, val)


class Softmax:
    """A multinomial logistic regression (scikit-learn's, L2, lbfgs) over sparse and/or dense feature blocks."""

    def __init__(self, blocks: Sequence[Any], labels: np.ndarray, n_classes: int, c: float) -> None:
        from scipy import sparse
        from sklearn.linear_model import LogisticRegression

        x = sparse.hstack(blocks).tocsr() if any(sparse.issparse(b) for b in blocks) else np.hstack(blocks)
        lr = LogisticRegression(C=c, max_iter=300, tol=1e-3)
        lr.fit(x, labels)
        coef = lr.coef_ if len(lr.classes_) > 2 else np.vstack([-lr.coef_[0] / 2, lr.coef_[0] / 2])
        bias = lr.intercept_ if len(lr.classes_) > 2 else np.array([-lr.intercept_[0] / 2, lr.intercept_[0] / 2])
        self.classes: np.ndarray = lr.classes_.astype(np.int64)
        self.n_classes = n_classes
        self._coef = np.ascontiguousarray(coef.T, dtype=np.float32)  # features × classes
        self._bias = bias.astype(np.float32)
        self._offsets = np.cumsum([0] + [b.shape[1] for b in blocks])

    def log_proba(self, parts: Sequence[Vector | np.ndarray]) -> np.ndarray:
        """Log-probabilities over all ``n_classes`` (classes never seen in training get -inf); one part per
        block: a sparse ``Vector`` or a dense 1-D array."""
        z = self._bias.copy()
        for off, part in zip(self._offsets[:-1], parts, strict=True):
            if isinstance(part, tuple):
                idx, val = part
                if len(idx):
                    z += val @ self._coef[off + idx]
            else:
                z += part @ self._coef[off:off + len(part)]
        z -= z.max()
        z -= np.log(np.exp(z).sum())
        out = np.full(self.n_classes, -np.inf, np.float32)
        out[self.classes] = z
        return out


def merge_near_duplicates(vectors: np.ndarray, threshold: float, chunk: int = 256) -> np.ndarray:
    """Unit-length rows with near-duplicates merged: going in order, a row whose cosine with a row kept before
    reaches ``threshold`` is added to the most similar kept row instead of being kept; the sums are scaled back to
    unit length. Chunked, so memory stays (kept × chunk) however many rows there are."""
    rows = np.asarray(vectors, dtype=np.float32)
    if len(rows) == 0 or threshold >= 1.0:
        return np.ascontiguousarray(rows)
    dim = rows.shape[1]
    kept = np.zeros((0, dim), np.float32)  # the first row of each group: what later rows are compared with
    sums = np.zeros((0, dim), np.float32)
    for start in range(0, len(rows), chunk):
        block = rows[start:start + chunk]
        if len(kept):
            sim = block @ kept.T
            best = sim.argmax(axis=1)
            near = sim[np.arange(len(block)), best] >= threshold
            np.add.at(sums, best[near], block[near])
            block = block[~near]
        owner, firsts = _greedy_groups(block, threshold)
        added = np.zeros((len(firsts), dim), np.float32)
        np.add.at(added, owner, block)
        kept = np.vstack([kept, block[firsts]])
        sums = np.vstack([sums, added])
    return sums / np.linalg.norm(sums, axis=1, keepdims=True)


def _greedy_groups(rows: np.ndarray, threshold: float) -> tuple[np.ndarray, list[int]]:
    """For each row, the group it joins (the first earlier group leader it is close enough to, else its own)."""
    sim = rows @ rows.T
    owner = np.zeros(len(rows), np.int64)
    firsts: list[int] = []
    for i in range(len(rows)):
        if firsts:
            j = int(np.argmax(sim[i, firsts]))
            if sim[i, firsts[j]] >= threshold:
                owner[i] = j
                continue
        owner[i] = len(firsts)
        firsts.append(i)
    return owner, firsts


class TokenIndex:
    """Late interaction (ColBERT's MaxSim, over the frozen sentence encoder's contextual token vectors): an
    article's score for a query is the mean, over the query's tokens, of the best cosine with any token of the
    article's title and example questions. One block of unit-length rows per article, float32 (float16 would
    halve the memory but converting the candidates' blocks per query cost more than the rest of the scoring)."""

    def __init__(self, blocks: Sequence[np.ndarray], dim: int) -> None:
        sizes = [len(b) for b in blocks]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        filled = [b for b in blocks if len(b)]
        self.vectors = (np.ascontiguousarray(np.concatenate(filled), dtype=np.float32) if filled
                        else np.zeros((0, dim), np.float32))

    @property
    def size(self) -> int:
        return len(self.vectors)

    def block(self, article: int) -> np.ndarray:
        return self.vectors[self.starts[article]:self.starts[article + 1]]

    def scores(self, query: np.ndarray, articles: np.ndarray) -> np.ndarray:
        """MaxSim of the query's token vectors (unit-length rows) for each of ``articles``; 0 without tokens."""
        out = np.zeros(len(articles), np.float32)
        if len(query) == 0:
            return out
        for k, a in enumerate(articles.tolist()):
            block = self.block(a)
            if len(block):
                out[k] = float((query @ block.T).max(axis=1).mean())
        return out
