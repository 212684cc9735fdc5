"""Term vectors and linear models for the ranker: fitted by scikit-learn once per index build, applied per query
with plain numpy on the fitted vocabulary, idf and coefficients.

Applying them ourselves skips scikit-learn's per-call input validation (it was most of a query's time), and
scikit-learn — with the scipy.stats/optimize modules it pulls in, about 80 MB of RSS — is imported only when
an index is fitted, not when this module is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import sparse

Vector = tuple[np.ndarray, np.ndarray]  # (column indices, values) of one sparse row
EMPTY: Vector = (np.zeros(0, np.int64), np.zeros(0, np.float32))


def _identity(x: list[str]) -> list[str]:
    return x


class TermVectors:
    """TF-IDF (sublinear tf, smoothed idf, L2-normalised) over token lists (``kind="word"``) or character
    3–5-grams inside words (``kind="char"``, with ``preprocessor`` applied to the raw text)."""

    def __init__(self, docs: Sequence[Any], kind: str, preprocessor: Callable[[str], str] | None = None,
                 max_features: int = 200_000) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if kind == "word":
            vec = TfidfVectorizer(analyzer=_identity, sublinear_tf=True)
        elif kind == "char":
            vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True,
                                  preprocessor=preprocessor, max_features=max_features)
        else:
            raise ValueError(f"unknown term vector kind {kind!r}: use 'word' or 'char'")
        self.matrix: sparse.csr_matrix = vec.fit_transform(docs).tocsr().astype(np.float32)
        self._analyze: Callable[[Any], list[str]] = vec.build_analyzer()
        self.vocabulary: dict[str, int] = vec.vocabulary_
        self.idf: np.ndarray = vec.idf_.astype(np.float32)
        # features × documents, so a query's few columns are a cheap row slice
        self._by_term: sparse.csr_matrix = self.matrix.T.tocsr()

    @property
    def size(self) -> int:
        return len(self.idf)

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
        if not len(idx):
            return np.zeros(self.matrix.shape[0], np.float32)
        return np.asarray(self._by_term[idx].T @ val).ravel()


class Softmax:
    """A multinomial logistic regression (scikit-learn's, L2, lbfgs) over sparse and/or dense feature blocks."""

    def __init__(self, blocks: Sequence[Any], labels: np.ndarray, n_classes: int, c: float) -> None:
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
